//! Measures the patch signal's texture statistic on photos: the frame's texture inside the
//! concentration box, clean and with a trained patch pasted the way `eval-video` pastes a
//! patch into the scene (drift, scale, rotation, perspective, gain, a 3×3 blur on half of
//! them). The texture floor of the fused detector is read from this on `dev` photos.
//!
//! `cargo run --release --example patch_texture -- MODEL_NAME PATCH.png [PHOTOS_DIR] [SKIP] [N]`
//! (defaults: `$ADVGUARD_DATA/images/dev`, skip the 100 files that train the patches, 150).

use advguard::engine::compile::CompileOptions;
use advguard::engine::manifest::Manifest;
use advguard::engine::{Guard, GuardOptions};
use advguard::eval::video::attacks::{SceneMotion, paste_in_scene};
use advguard::response::{self, ResponseConfig, region};
use ndarray::Array3;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn quantiles(name: &str, v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<28} n={:<4} min {:6.2}  p1 {:6.2}  p5 {:6.2}  p50 {:6.2}  p95 {:6.2}  p99 {:6.2}  max {:6.2}",
        v.len(),
        v[0],
        q(0.01),
        q(0.05),
        q(0.5),
        q(0.95),
        q(0.99),
        v[v.len() - 1]
    );
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 2 {
        anyhow::bail!("usage: patch_texture MODEL_NAME PATCH.png [PHOTOS_DIR] [SKIP] [N]");
    }
    let dir = a
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| advguard::data_dir().join("images/dev"));
    let skip: usize = a.get(3).map_or(Ok(100), |s| s.parse())?;
    let n: usize = a.get(4).map_or(Ok(150), |s| s.parse())?;
    let manifest = Manifest::load(&a[0])?;
    let mut guard = Guard::open(
        &manifest,
        &GuardOptions {
            compile: Some(CompileOptions::default()),
            ..Default::default()
        },
    )?;
    let size = guard.size();
    let img = image::open(&a[1])?.to_rgb8();
    let patch = Array3::from_shape_fn(
        (img.height() as usize, img.width() as usize, 3),
        |(y, x, c)| img.get_pixel(x as u32, y as u32)[c] as f32,
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    files.sort();
    let cfg = ResponseConfig::default();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut clean, mut patched, mut conc_clean, mut conc_patched) =
        (vec![], vec![], vec![], vec![]);
    let mut on_patch = vec![];
    for f in files.iter().skip(skip).take(n) {
        let photo = image::open(f)?.to_rgb8();
        // Squashed like a camera frame, as eval-video feeds footage.
        let frame =
            image::imageops::resize(&photo, size, size, image::imageops::FilterType::Triangle)
                .into_raw();
        let mut score = |rgb: &[u8]| -> anyhow::Result<response::FrameStats> {
            let out = guard.run_rgb8(rgb, size, size)?;
            let mut st = response::analyze(out.response.view(), &cfg);
            st.measure_texture(rgb, size, size);
            Ok(st)
        };
        let st = score(&frame)?;
        clean.extend(st.box_texture);
        conc_clean.push(st.concentration);
        let m = SceneMotion::random(patch.dim().0, size, &mut rng);
        let mut rgb = frame.clone();
        let pb = paste_in_scene(&mut rgb, size, &patch, &m, 0.0, &mut rng);
        let st = score(&rgb)?;
        patched.extend(st.box_texture);
        conc_patched.push(st.concentration);
        // Only a box on the patch can fire the patch signal for it: the floor is read here.
        if region::iou(st.bbox, pb) >= 0.5 {
            on_patch.extend(st.box_texture);
        }
    }
    println!(
        "{} on {} photos of {}",
        a[0],
        conc_clean.len(),
        dir.display()
    );
    quantiles("clean box texture", &mut clean);
    quantiles("patched box texture", &mut patched);
    quantiles("clean concentration", &mut conc_clean);
    quantiles("patched concentration", &mut conc_patched);
    if !on_patch.is_empty() {
        quantiles("patched, box on the patch", &mut on_patch);
    }
    Ok(())
}
