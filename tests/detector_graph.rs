//! The guard graph of a real object detector: CenterNet-MobileNetV3 (COCO) from
//! `../shared/data/models`, which needs the detector ops (hard-swish and
//! squeeze-excite products of two image-dependent tensors, Sigmoid, Resize ×2
//! linear/asymmetric, GlobalAveragePool into Mul).
//!
//! torch is no reference for this model (onnx2torch's Resize disagrees with ONNX
//! Runtime), so plain mode is checked against central finite differences of the
//! original model run on ONNX Runtime, and tract against ONNX Runtime.

use advguard::engine::compile::{CompileOptions, Mode, Seed, TENSORRT_SAFE_OPS, compile};
use advguard::engine::guard::open_engine;
use advguard::engine::{BackendKind, ort_backend};
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

const INPUT: &str = "tower_0/images";
const KEYPOINTS: &str = "tower_0/keypoints";
const SIZE: usize = 512;

fn model_path() -> PathBuf {
    advguard::data_dir().join("models/centernet_mobilenetv3_coco.onnx")
}

/// RGB 0–255, squashed to 512×512, no mean or std (the data README's preprocessing).
fn photo(name: &str) -> Array4<f32> {
    let img = image::open(advguard::data_dir().join("images/dev").join(name))
        .expect("photo loads")
        .to_rgb8();
    let img = image::imageops::resize(
        &img,
        SIZE as u32,
        SIZE as u32,
        image::imageops::FilterType::Triangle,
    );
    Array4::from_shape_fn((1, 3, SIZE, SIZE), |(_, c, y, x)| {
        img.get_pixel(x as u32, y as u32)[c] as f32
    })
}

fn person_seed() -> Seed {
    Seed::Channel(KEYPOINTS.into(), 0)
}

fn guard(mode: Mode, target: advguard::engine::compile::Target) -> advguard::onnx::pb::ModelProto {
    let model = advguard::onnx::load(&model_path()).unwrap();
    compile(
        &model,
        &CompileOptions {
            mode,
            seed: person_seed(),
            target,
            ..Default::default()
        },
    )
    .expect("CenterNet compiles")
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += x as f64 * y as f64;
        na += (x as f64).powi(2);
        nb += (y as f64).powi(2);
    }
    d / (na.sqrt() * nb.sqrt()).max(1e-300)
}

fn need_ort() {
    assert!(
        ort_backend::available(),
        "ONNX Runtime is not loadable: run `bash scripts/setup.sh --deps` or set ORT_DYLIB_PATH"
    );
}

#[test]
fn centernet_guard_graph_is_tensorrt_safe_in_both_modes() {
    for mode in [Mode::Guided, Mode::Plain] {
        let g = guard(mode, Default::default());
        let nodes = &g.graph.as_ref().unwrap().node;
        let bad: Vec<&str> = nodes
            .iter()
            .map(|n| n.op_type.as_str())
            .filter(|op| !TENSORRT_SAFE_OPS.contains(op))
            .collect();
        assert!(
            bad.is_empty(),
            "{mode}: ops outside TensorRT's parser set: {bad:?}"
        );
        for op in ["Resize", "Sigmoid", "MatMul", "Mul"] {
            assert!(
                nodes.iter().any(|n| n.op_type == op),
                "{mode}: expected a {op} in the guard graph"
            );
        }
    }
}

#[test]
fn centernet_runs_on_tract_and_ort_and_keeps_its_heat_map() {
    need_ort();
    let x = photo("n02835271_bicycle-built-for-two.JPEG");
    let original = advguard::onnx::load(&model_path()).unwrap();
    let mut reference =
        open_engine(&original, INPUT, [1, 3, SIZE, SIZE], BackendKind::OrtCpu).unwrap();
    let want = reference.run(x.view(), None).unwrap().logits;
    let peak = want[..128 * 128].iter().cloned().fold(0f32, f32::max);
    assert!(
        peak > 0.3,
        "the photo's persons are detected by the original model (peak {peak})"
    );
    for mode in [Mode::Guided, Mode::Plain] {
        let mut responses = vec![];
        for (be, target) in [
            (BackendKind::Tract, advguard::engine::compile::Target::Tract),
            (
                BackendKind::OrtCpu,
                advguard::engine::compile::Target::OnnxRuntime,
            ),
        ] {
            let g = guard(mode, target);
            let mut e = open_engine(&g, INPUT, [1, 3, SIZE, SIZE], be).unwrap();
            let out = e.run(x.view(), None).unwrap();
            let err = out
                .logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-3,
                "{mode} on {be:?}: heat map differs from the original by {err}"
            );
            let r: Vec<f32> = out.response.iter().copied().collect();
            assert!(
                r.iter().all(|v| v.is_finite()),
                "{mode} on {be:?}: non-finite response"
            );
            let nz = r.iter().filter(|v| **v != 0.0).count();
            assert!(
                nz > r.len() / 10,
                "{mode} on {be:?}: response nearly all zero ({nz} non-zero)"
            );
            responses.push(r);
        }
        let c = cos(&responses[0], &responses[1]);
        eprintln!("{mode}: tract vs ORT response cos {c:.7}");
        assert!(
            c > 0.9999,
            "{mode}: tract and ORT responses disagree (cos {c})"
        );
    }
}

#[test]
fn centernet_plain_response_equals_finite_differences_on_ort() {
    need_ort();
    let x = photo("n02835271_bicycle-built-for-two.JPEG");
    let original = advguard::onnx::load(&model_path()).unwrap();
    let mut fwd = open_engine(&original, INPUT, [1, 3, SIZE, SIZE], BackendKind::OrtCpu).unwrap();
    let g = guard(Mode::Plain, advguard::engine::compile::Target::OnnxRuntime);
    let mut e = open_engine(&g, INPUT, [1, 3, SIZE, SIZE], BackendKind::OrtCpu).unwrap();
    let resp: Vec<f32> = e
        .run(x.view(), None)
        .unwrap()
        .response
        .iter()
        .copied()
        .collect();
    // f(x) = ½‖person heat map‖², in f64 from the f32 outputs.
    let mut f = |x: &Array4<f32>| -> f64 {
        let kp = fwd.run(x.view(), None).unwrap().logits;
        kp[..128 * 128]
            .iter()
            .map(|&v| 0.5 * (v as f64).powi(2))
            .sum()
    };
    // Along the response itself (a float32 forward resolves that derivative;
    // random ±1 directions over 786k pixels cross too many ReLU/Clip kinks), and
    // along two random directions confined to a 64×64 window on the persons (their
    // derivatives are ~1e-3 of the first, so float32 resolves them only coarsely).
    let mut rng = StdRng::seed_from_u64(11);
    let max = resp.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut dirs: Vec<(String, Vec<f32>)> = vec![(
        "the response".into(),
        resp.iter().map(|r| r / max).collect(),
    )];
    for k in 0..2 {
        let mut v = vec![0f32; resp.len()];
        for c in 0..3 {
            for y in 200..264 {
                for x in 200..264 {
                    v[(c * SIZE + y) * SIZE + x] = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                }
            }
        }
        dirs.push((format!("random window {k}"), v));
    }
    let h = 0.05f32;
    let mut errs = vec![];
    for (label, v) in &dirs {
        let va = Array4::from_shape_vec((1, 3, SIZE, SIZE), v.clone()).unwrap();
        let fd = (f(&(&x + &(&va * h))) - f(&(&x - &(&va * h)))) / (2.0 * h as f64);
        let an: f64 = resp.iter().zip(v).map(|(&r, &d)| r as f64 * d as f64).sum();
        let rel = (fd - an).abs() / an.abs().max(fd.abs()).max(1e-12);
        eprintln!(
            "along {label}: finite difference {fd:.6e}, guard graph {an:.6e}, relative error {rel:.2e}"
        );
        errs.push(rel);
    }
    assert!(errs[0] < 0.01, "along the response: {errs:?}");
    assert!(
        errs[1..].iter().all(|&e| e < 0.2),
        "along random windows: {errs:?}"
    );
}
