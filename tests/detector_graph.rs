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
    Seed::Channel(KEYPOINTS.into(), vec![0])
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

/// The response of one guard frame, flat.
fn response_of(e: &mut dyn advguard::engine::Engine, x: &Array4<f32>) -> Vec<f32> {
    e.run(x.view(), None)
        .unwrap()
        .response
        .iter()
        .copied()
        .collect()
}

fn need_ort() {
    assert!(
        ort_backend::available(),
        "ONNX Runtime is not loadable: run `bash scripts/setup.sh --deps` or set ORT_DYLIB_PATH"
    );
}

#[test]
fn centernet_guard_graph_is_tensorrt_safe_in_both_modes() {
    let model = advguard::onnx::load(&model_path()).unwrap();
    let peaks = "peaks:tower_0/keypoints[0]@0.3".parse::<Seed>().unwrap();
    for (mode, seed) in [
        (Mode::Guided, person_seed()),
        (Mode::Plain, person_seed()),
        (Mode::Guided, peaks),
    ] {
        let opts = CompileOptions {
            mode,
            seed,
            ..Default::default()
        };
        let g = compile(&model, &opts).expect("CenterNet compiles");
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
    let resp = response_of(e.as_mut(), &x);
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

/// The person peaks as the decode finds them (`engine::detect::peaks`, a loop over cells written
/// apart from the graph), or the strongest person cells where none reaches the threshold.
fn decoded_person_cells(heat: &[f32], threshold: f32) -> Vec<(usize, usize)> {
    let kp = ndarray::ArrayView3::from_shape((80, 128, 128), heat).unwrap();
    let person = kp.slice(ndarray::s![0..1, .., ..]);
    let top = person.iter().cloned().fold(f32::MIN, f32::max);
    let mut cells: Vec<(usize, usize)> =
        advguard::engine::detect::peaks(person, 3, threshold.min(top))
            .iter()
            .map(|p| (p.row, p.col))
            .collect();
    cells.sort();
    cells
}

/// `seed_cells` of a peaks-seeded guard graph: the cells equal to 1, in row-major order.
fn graph_cells(out: &advguard::engine::GuardOutput) -> Vec<(usize, usize)> {
    let cells = out
        .output(advguard::engine::SEED_CELLS)
        .expect("a peaks-seeded graph outputs seed_cells");
    assert_eq!(cells.shape(), &[1, 1, 128, 128]);
    assert!(cells.iter().all(|&v| v == 0.0 || v == 1.0), "a 0/1 mask");
    cells
        .indexed_iter()
        .filter(|(_, v)| **v == 1.0)
        .map(|(i, _)| (i[2], i[3]))
        .collect()
}

/// The default seed of a detector, the sum of its detected person peaks: the graph's seed cells
/// are the decode's peaks (on tract and ONNX Runtime, with and without a detected person), and
/// in plain mode the response is the gradient of that sum (central finite differences of the
/// original model on ONNX Runtime).
#[test]
fn peaks_seed_starts_at_the_decoded_peaks_and_its_response_is_their_gradient() {
    const THR2: f32 = 0.1;
    need_ort();
    let seed = Seed::Peaks {
        tensor: KEYPOINTS.into(),
        channels: vec![0],
        window: 3,
        threshold: 0.3,
    };
    assert_eq!(seed.to_string(), "peaks:tower_0/keypoints[0]@0.3");
    assert_eq!(seed.to_string().parse::<Seed>().unwrap(), seed);
    let original = advguard::onnx::load(&model_path()).unwrap();
    let mut fwd = open_engine(&original, INPUT, [1, 3, SIZE, SIZE], BackendKind::OrtCpu).unwrap();
    let compiled = |mode, target| {
        let opts = CompileOptions {
            mode,
            seed: seed.clone(),
            target,
            ..Default::default()
        };
        compile(&original, &opts).expect("CenterNet compiles with a peaks seed")
    };
    use advguard::engine::compile::Target;
    let mut engines = vec![
        open_engine(
            &compiled(Mode::Plain, Target::OnnxRuntime),
            INPUT,
            [1, 3, SIZE, SIZE],
            BackendKind::OrtCpu,
        )
        .unwrap(),
        open_engine(
            &compiled(Mode::Guided, Target::Tract),
            INPUT,
            [1, 3, SIZE, SIZE],
            BackendKind::Tract,
        )
        .unwrap(),
    ];
    // Persons detected; then a photo without any (the strongest cell stands in).
    let mut without_person = 0;
    for name in [
        "n02835271_bicycle-built-for-two.JPEG",
        "n01440764_tench.JPEG",
        "n01484850_great_white_shark.JPEG",
        "n01494475_hammerhead.JPEG",
        "n01498041_stingray.JPEG",
    ] {
        let x = photo(name);
        let heat = fwd.run(x.view(), None).unwrap().logits;
        let want = decoded_person_cells(&heat, 0.3);
        assert!(!want.is_empty());
        let top = heat[..128 * 128].iter().cloned().fold(0f32, f32::max);
        if top < 0.3 {
            without_person += 1;
        }
        for e in &mut engines {
            let out = e.run(x.view(), None).unwrap();
            assert_eq!(
                graph_cells(&out),
                want,
                "{name}: seed cells vs the decode's peaks (top {top})"
            );
        }
        eprintln!("{name}: person top {top:.3}, {} seed cell(s)", want.len());
    }
    assert!(without_person > 0, "one photo has no detected person");

    // f(x) = Σ over the clean photo's peak cells of the person heat map.
    let x = photo("n02835271_bicycle-built-for-two.JPEG");
    let cells = decoded_person_cells(&fwd.run(x.view(), None).unwrap().logits, 0.3);
    assert!(cells.len() >= 2, "the photo has persons: {cells:?}");
    let resp = response_of(engines[0].as_mut(), &x);
    let mut f = |x: &Array4<f32>| -> f64 {
        let kp = fwd.run(x.view(), None).unwrap().logits;
        cells.iter().map(|&(r, c)| kp[r * 128 + c] as f64).sum()
    };
    let max = resp.iter().fold(0f32, |m, v| m.max(v.abs()));
    let v =
        Array4::from_shape_vec((1, 3, SIZE, SIZE), resp.iter().map(|r| r / max).collect()).unwrap();
    let h = 0.05f32;
    let fd = (f(&(&x + &(&v * h))) - f(&(&x - &(&v * h)))) / (2.0 * h as f64);
    let an: f64 = resp
        .iter()
        .zip(v.iter())
        .map(|(&r, &d)| r as f64 * d as f64)
        .sum();
    let rel = (fd - an).abs() / an.abs().max(fd.abs()).max(1e-12);
    eprintln!(
        "along the response: finite difference {fd:.6e}, guard graph {an:.6e}, relative error {rel:.2e}"
    );
    // Measured 9.3e-3 (float32 forward passes, ReLU/Clip kinks within ±h); a seed on other
    // cells (the whole person map, the top cell alone) moves the directional derivative by
    // far more.
    assert!(
        rel < 0.03,
        "plain response vs finite differences of the peak sum: {rel:.3e}"
    );

    // Two classes, persons and bicycles (both over THR2 on this photo): each channel's seed cells
    // are its own peaks, and the plain response is the sum of the two one-class responses.
    let plain = |channels: Vec<usize>| {
        let opts = CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Peaks {
                tensor: KEYPOINTS.into(),
                channels,
                window: 3,
                threshold: THR2,
            },
            target: Target::OnnxRuntime,
            ..Default::default()
        };
        let g = compile(&original, &opts).unwrap();
        let mut e = open_engine(&g, INPUT, [1, 3, SIZE, SIZE], BackendKind::OrtCpu).unwrap();
        e.run(x.view(), None).unwrap()
    };
    let heat = fwd.run(x.view(), None).unwrap().logits;
    let kp = ndarray::ArrayView3::from_shape((80, 128, 128), &heat[..]).unwrap();
    let bike_top = kp
        .slice(ndarray::s![1, .., ..])
        .iter()
        .cloned()
        .fold(0f32, f32::max);
    eprintln!("bicycle top {bike_top}");
    let bikes = advguard::engine::detect::peaks(kp.slice(ndarray::s![1..2, .., ..]), 3, THR2);
    assert!(
        !bikes.is_empty(),
        "the photo's bicycle is detected at {THR2}"
    );
    let both = plain(vec![1, 0]);
    let cells = both.output(advguard::engine::SEED_CELLS).unwrap();
    assert_eq!(cells.shape(), &[1, 2, 128, 128]);
    for (j, class) in [0usize, 1].into_iter().enumerate() {
        let mut got: Vec<(usize, usize)> = cells
            .slice(ndarray::s![0, j, .., ..])
            .indexed_iter()
            .filter(|(_, v)| **v == 1.0)
            .map(|(i, _)| i)
            .collect();
        got.sort();
        let mut want: Vec<(usize, usize)> = advguard::engine::detect::peaks(
            kp.slice(ndarray::s![class..class + 1, .., ..]),
            3,
            THR2,
        )
        .iter()
        .map(|p| (p.row, p.col))
        .collect();
        want.sort();
        assert_eq!(got, want, "class {class}");
    }
    let sum: Vec<f32> = plain(vec![0])
        .response
        .iter()
        .zip(plain(vec![1]).response.iter())
        .map(|(a, b)| a + b)
        .collect();
    let both: Vec<f32> = both.response.iter().copied().collect();
    let c = cos(&sum, &both);
    eprintln!("persons + bicycles: cos(response, sum of the two) {c:.8}");
    assert!(c > 0.99999, "{c}");
}
