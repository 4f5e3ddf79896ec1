//! The person-hiding patch (issue 14 §3) on the real CenterNet-MobileNetV3 and real photos:
//! the patch gradient that training descends is the derivative of the hiding loss (checked by
//! finite differences through the real paste), and a short training run lowers the loss on
//! its photos against the random patch it started from.

use advguard::attack::eot::Transform;
use advguard::attack::hide::{self, HideConfig, Persons};
use advguard::attack::patch::Placement;
use advguard::engine::detect;
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use advguard::engine::{BackendKind, Guard};
use ndarray::{Array3, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng};

const NAME: &str = "centernet_mobilenetv3_coco";
/// Two persons on a tandem bicycle (the data README lists them).
const TANDEM: &str = "n02835271_bicycle-built-for-two.JPEG";

fn manifest() -> Manifest {
    Manifest::load(NAME).expect("the detector manifest loads")
}

fn loss_guard(cfg: &HideConfig) -> Guard {
    let m = manifest();
    let mut o = hide::loss_options(&m, cfg);
    o.model_path = Some(advguard::data_dir().join("models/centernet_mobilenetv3_coco.onnx"));
    o.backend = BackendKind::Auto;
    Guard::open(&m, &o).expect("the hiding-loss graph opens")
}

fn photo(g: &Guard, name: &str) -> Array3<f32> {
    let p = advguard::data_dir().join("images/dev").join(name);
    Preprocess::pixels(&g.preprocess().load_image(&p).expect("photo loads"))
}

fn persons(g: &mut Guard, px: &Array3<f32>, cfg: &HideConfig) -> Persons {
    let out = g.run_pixels(px.view()).unwrap();
    let dets = detect::detections(g, &out, 512, 512).unwrap();
    hide::persons_in(&dets, cfg, 32.0)
}

/// Unscaled, unrotated, no colour change: the paste is exact integer copying, so moving patch
/// pixels by whole units moves the pasted photo by exactly that much.
fn plain_transforms(p: &Persons) -> Vec<Transform> {
    p.boxes
        .iter()
        .map(|b| {
            Transform::at(Placement {
                cx: (b[0] + b[2]) / 2.0,
                cy: b[1] + 0.45 * (b[3] - b[1]),
                scale: 1.0,
                angle: 0.0,
            })
        })
        .collect()
}

fn loss_of(
    g: &mut Guard,
    patch: &advguard::attack::patch::Patch,
    px: &Array3<f32>,
    ts: &[Transform],
    cfg: &HideConfig,
) -> f64 {
    let (x, _) = hide::paste_all(patch, px.view(), ts);
    let out = g.run_pixels(x.view()).unwrap();
    hide::loss(&out, g, cfg).unwrap()
}

#[test]
fn the_patch_gradient_is_the_derivative_of_the_hiding_loss() {
    let cfg = HideConfig::default();
    let mut g = loss_guard(&cfg);
    let px = photo(&g, TANDEM);
    let ps = persons(&mut g, &px, &cfg);
    assert!(
        ps.boxes.len() >= 2,
        "the tandem photo shows two persons, found {:?}",
        ps.scores
    );
    let side = 40;
    let mut rng = StdRng::seed_from_u64(7);
    let pixels = Array3::from_shape_fn((side, side, 3), |_| {
        rng.random_range(40.0f32..=215.0).round()
    });
    let patch = hide::as_patch(pixels, &cfg);
    let ts = plain_transforms(&ps);
    let (x, _) = hide::paste_all(&patch, px.view(), &ts);
    let out = g.run_pixels(x.view()).unwrap();
    let g4 = out.response.clone().insert_axis(Axis(0));
    let gpx = g.preprocess().grad_to_pixels(g4.view());
    let mut grad = vec![0f32; side * side * 3];
    for t in &ts {
        patch.scatter_grad(&gpx, t, &mut grad);
    }
    // Along d = sign(grad) on the 64 pixels with the largest |grad|, one pixel unit each way:
    // the loss changes by ≈ Σ of those |grad| (small steps, so the peaks and masks stay put).
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&i, &j| grad[j].abs().total_cmp(&grad[i].abs()));
    let top = &order[..64];
    let shifted = |sgn: f32| {
        let mut q = patch.clone();
        let flat = q.pixels.as_slice_mut().unwrap();
        for &i in top {
            flat[i] += sgn * grad[i].signum();
        }
        q
    };
    let (up, down) = (shifted(1.0), shifted(-1.0));
    let fd = (loss_of(&mut g, &up, &px, &ts, &cfg) - loss_of(&mut g, &down, &px, &ts, &cfg)) / 2.0;
    let predicted: f64 = top.iter().map(|&i| grad[i].abs() as f64).sum();
    let rel = (fd - predicted).abs() / predicted.abs().max(1e-12);
    println!("finite difference {fd:.6}, gradient {predicted:.6}, rel {rel:.3}");
    assert!(predicted > 1e-4, "the patch has a gradient: {predicted}");
    assert!(
        rel < 0.2,
        "the patch gradient is off: FD {fd}, predicted {predicted}"
    );
}

#[test]
fn a_short_training_run_lowers_the_hiding_loss_on_its_photos() {
    // No jitter, one placement per person: the loss training descends is then one fixed
    // function, so it must fall (with EOT a short run is too noisy to judge).
    let cfg = HideConfig {
        steps: 20,
        batch: 1,
        side: 48,
        lr: 8.0,
        jitter: advguard::attack::eot::Jitter::position_only(),
        shift: 0.0,
        ..HideConfig::default()
    };
    let mut g = loss_guard(&cfg);
    let px = photo(&g, TANDEM);
    let found = persons(&mut g, &px, &cfg);
    assert!(found.boxes.len() >= 2, "two persons: {found:?}");
    let photos = vec![px.clone()];
    let (patch, stats) = hide::train(
        &mut g,
        &photos,
        std::slice::from_ref(&found),
        &cfg,
        3,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(stats.calls, 20);
    // The same random start as training (seed 3).
    let mut rng = StdRng::seed_from_u64(3);
    let start = hide::as_patch(
        Array3::from_shape_fn((48, 48, 3), |_| rng.random_range(0.0f32..=255.0).round()),
        &cfg,
    );
    let mut r = StdRng::seed_from_u64(0);
    let ts: Vec<Transform> = found
        .boxes
        .iter()
        .map(|b| hide::torso_transform(*b, 48, &cfg, &mut r))
        .collect();
    let before = loss_of(&mut g, &start, &px, &ts, &cfg);
    let after = loss_of(&mut g, &patch, &px, &ts, &cfg);
    println!("loss before {before:.3}, after {after:.3}; stats {stats:?}");
    assert!(
        after < 0.8 * before,
        "training did not lower the loss: {before} → {after}"
    );
}

fn eval_hide(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let data = advguard::data_dir();
    std::process::Command::new(env!("CARGO_BIN_EXE_advguard"))
        .arg("eval-hide")
        .arg("--train")
        .arg(data.join("images/dev"))
        .arg("--test")
        .arg(data.join("images/val"))
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("advguard runs")
}

#[test]
fn eval_hide_trains_judges_resumes_and_refuses_a_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = advguard::data_dir().join("videos/one-by-one-person-detection.mp4");
    let short = [
        "--limit",
        "30",
        "--steps",
        "3",
        "--batch",
        "1",
        "--clip",
        clip.to_str().unwrap(),
        // The walking person enters after about 16 s (10 fps).
        "--max-frames",
        "300",
        "--stretches",
        "2",
    ];
    let o = eval_hide(tmp.path(), &short);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(tmp.path().join("hide-guided-default.md")).unwrap();
    for want in [
        "| hiding patch |",
        "| noise sticker |",
        "| photo sticker |",
        "concentration",
        "## Video: the vanishing-track signal",
        "| one-by-one-person-detection | hiding patch | 2 |",
    ] {
        assert!(md.contains(want), "{want:?} missing from the report:\n{md}");
    }
    assert!(tmp.path().join("patch.png").exists());
    assert!(stdout.contains("patch: trained"), "{stdout}");
    // A rerun finds the patch, the persons and the records, and judges nothing again.
    let o = eval_hide(tmp.path(), &short);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("patch: cached"),
        "{stdout}"
    );
    // A classifier has no persons to hide: one clear error.
    let o = eval_hide(tmp.path(), &["--model-name", "squeezenet1.1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("eval-hide needs a detector; squeezenet1.1 is a classifier"),
        "{err}"
    );
}
