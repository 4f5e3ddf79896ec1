//! The explain view on a real frame: car-detection.mp4 decoded by the watch source, scored by
//! the real guard (SqueezeNet, tract), drawn by `watch::overlay::explain`.
//!
//! With `ADVGUARD_WRITE_DOCS_IMG=DIR` the picture is also written to DIR/overlay.png (the
//! README's screenshot).

use advguard::detector::score::{FrameScores, jump};
use advguard::detector::{DetectorConfig, DetectorKind};
use advguard::engine::compile::CompileOptions;
use advguard::engine::manifest::Manifest;
use advguard::engine::{BackendKind, Guard, GuardOptions};
use advguard::response::{self, ResponseConfig};
use advguard::source::{self, SourceMsg, SourceSpec};
use advguard::viz::heat;
use advguard::watch::overlay::{Explain, ScoreHistory, Signal, explain};
use image::{RgbImage, imageops};

/// The first `n` frames of a clip at model size, their stream times and the camera's size.
fn frames(clip: &str, n: usize) -> (Vec<(u64, RgbImage)>, (u32, u32)) {
    let path = advguard::data_dir().join("videos").join(clip);
    let spec = SourceSpec::new("street", path.display().to_string());
    let (tx, rx) = crossbeam_channel::bounded(8);
    let h = source::spawn(spec, tx).unwrap();
    let (mut out, mut native) = (Vec::new(), None);
    for m in rx.iter() {
        match m {
            SourceMsg::Frame(f) => {
                native = native.or(f.native);
                out.push((
                    f.pts_ms,
                    RgbImage::from_raw(f.width, f.height, f.rgb).unwrap(),
                ));
                if out.len() == n {
                    break;
                }
            }
            SourceMsg::Eos { .. } => break,
            SourceMsg::Error { error, .. } => panic!("{error}"),
        }
    }
    h.stop();
    (
        out,
        native.expect("the source reports the camera's frame size"),
    )
}

#[test]
fn the_explain_view_keeps_the_camera_size_and_the_scene_and_colours_the_heat() {
    // Frame 216 shows two cars; the 30 frames before it fill the strip with real scores.
    let (frames, native) = frames("car-detection.mp4", 217);
    assert_eq!(native, (768, 432), "car-detection.mp4 is 768×432");
    let mut g = Guard::open(
        &Manifest::load("squeezenet1.1").unwrap(),
        &GuardOptions {
            model_path: None,
            backend: BackendKind::Tract,
            compile: Some(CompileOptions::default()),
        },
    )
    .unwrap();
    let det = DetectorConfig::default_for(DetectorKind::Onset);
    let mut history = ScoreHistory::new(vec![Signal {
        name: "onset".into(),
        threshold: det.rule.threshold,
    }]);
    let (mut prev, mut last) = (None::<Vec<f32>>, None);
    for (pts, img) in &frames[187..] {
        let out = g.run_rgb8(img.as_raw(), img.width(), img.height()).unwrap();
        let probs = out.probs();
        let (stats, mag) =
            response::analyze_with_magnitude(out.response.view(), &ResponseConfig::default());
        let scores = FrameScores {
            entropy: stats.entropy,
            concentration: stats.concentration,
            patch: stats.concentration,
            kl: 0.0,
            onset: prev.as_ref().map_or(0.0, |q| jump(&probs, q)),
            vanish: 0.0,
        };
        prev = Some(probs);
        history.push(*pts, &scores, false);
        last = Some((img.clone(), mag, stats.bbox));
    }
    let (frame, mag, bbox) = last.unwrap();
    let caption = "street  car-detection.mp4 frame 216  (clean)";
    let pic = explain(&Explain {
        frame: &frame,
        magnitude: mag.view(),
        bbox: Some(bbox),
        size: native,
        caption,
        alert: false,
        history: Some(&history),
        detections: &[],
    });
    if let Ok(dir) = std::env::var("ADVGUARD_WRITE_DOCS_IMG") {
        pic.save(std::path::Path::new(&dir).join("overlay.png"))
            .unwrap();
    }
    assert_eq!(pic.dimensions(), native);

    // The frame it was drawn over, and the heat as the blend saw it.
    let (w, h) = native;
    let base = imageops::resize(&frame, w, h, imageops::FilterType::CatmullRom);
    let hm = heat::normalised(mag.view(), w, h);
    // Rows between the caption band and the strip, and away from the box outline.
    let (y0, y1) = (40, h - 120);
    let sx = w as f32 / frame.width() as f32;
    let sy = h as f32 / frame.height() as f32;
    let on_box = |x: u32, y: u32| {
        let (bx0, by0) = ((bbox[0] as f32 * sx) as i64, (bbox[1] as f32 * sy) as i64);
        let (bx1, by1) = (
            bx0 + (bbox[2] as f32 * sx) as i64,
            by0 + (bbox[3] as f32 * sy) as i64,
        );
        let (x, y) = (x as i64, y as i64);
        let near = |a: i64, b: i64| (a - b).abs() <= 3;
        ((near(x, bx0) || near(x, bx1)) && y >= by0 - 3 && y <= by1 + 3)
            || ((near(y, by0) || near(y, by1)) && x >= bx0 - 3 && x <= bx1 + 3)
    };
    let (mut cold, mut cold_same, mut peak) = (0u64, 0u64, (0, 0, 0f32));
    for y in y0..y1 {
        for x in 0..w {
            let v = hm.get_pixel(x, y)[0];
            if v > peak.2 {
                peak = (x, y, v);
            }
            if v < heat::HEAT_FLOOR && !on_box(x, y) {
                cold += 1;
                cold_same += u64::from(pic.get_pixel(x, y) == base.get_pixel(x, y));
            }
        }
    }
    let area = (w * (y1 - y0)) as u64;
    // Most of the scene is where the network does not look, and there it is shown as it is.
    assert!(cold * 2 > area, "only {cold} of {area} pixels are cold");
    assert_eq!(cold_same, cold, "cold pixels changed by the heat layer");
    // Where the heat peaks, the picture is coloured.
    let (px, py, pv) = peak;
    assert!(pv > 0.9, "heat peak {pv}");
    let (a, b) = (pic.get_pixel(px, py), base.get_pixel(px, py));
    let diff: i32 = (0..3).map(|k| (a[k] as i32 - b[k] as i32).abs()).sum();
    assert!(diff > 60, "peak pixel {a:?} vs frame {b:?}");
}
