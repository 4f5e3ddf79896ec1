//! Criterion benchmarks: local entropy on a 224×224 map, and one guard frame
//! (forward + guided backward + entropy) for each shared classifier on tract and on
//! ONNX Runtime CPU (1 thread) in the same run, with the plain forward pass of each as
//! the reference; the run ends with a table of guard/forward ratios.
//!
//! `ADVGUARD_MODELS=../shared/data/models cargo bench --bench guard [-- MODEL]`
//! (`BENCH_MODELS=squeezenet1.1,mobilenet_v2` restricts the models).

use advguard::engine::compile::CompileOptions;
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use advguard::engine::{BackendKind, Guard, GuardOptions, ort_backend};
use advguard::response::{self, ResponseConfig, entropy};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use std::time::Instant;

fn entropy_bench(c: &mut Criterion) {
    let mut s = 7u64;
    let gray = Array2::from_shape_fn((224, 224), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    });
    for bins in [16, 256] {
        c.bench_function(&format!("entropy_224_{bins}bins"), |b| {
            b.iter(|| entropy::mean_local_entropy(gray.view(), bins))
        });
    }
}

/// The three shared classifiers, each on every backend that loads: the plain forward
/// pass (the reference) and a guard frame (guided, last-conv seed, plus S̄).
fn guard_bench(c: &mut Criterion) {
    let mut backends = vec![BackendKind::Tract];
    if ort_backend::available() {
        backends.push(BackendKind::OrtCpu);
    } else {
        eprintln!("ONNX Runtime not loadable: skipping the ORT rows");
    }
    let only = std::env::var("BENCH_MODELS").unwrap_or_default();
    let mut interleaved = vec![];
    for name in MODELS {
        if !only.is_empty() && !only.split(',').any(|m| m == *name) {
            continue;
        }
        let m = Manifest::load(name).expect("manifest");
        let model = advguard::data_dir().join("models").join(&m.model.file);
        let img = m
            .preprocess
            .load_image(&advguard::data_dir().join("images/dev/n01440764_tench.JPEG"))
            .expect("photo");
        let px = Preprocess::pixels(&img);
        let cfg = ResponseConfig::default();
        let mut group = c.benchmark_group(*name);
        group.sample_size(30);
        for &be in &backends {
            let open = |compile| {
                Guard::open(
                    &m,
                    &GuardOptions {
                        model_path: Some(model.clone()),
                        backend: be,
                        compile,
                    },
                )
                .expect("guard")
            };
            let mut fwd = open(None);
            let mut guard = open(Some(CompileOptions::default()));
            let be_name = fwd.backend().to_string();
            group.bench_function(format!("{be_name}/forward"), |b| {
                b.iter(|| fwd.run_pixels(px.view()).expect("run"))
            });
            group.bench_function(format!("{be_name}/guard_frame"), |b| {
                b.iter(|| {
                    let out = guard.run_pixels(px.view()).expect("run");
                    response::analyze(out.response.view(), &cfg)
                })
            });
            // Criterion times the two benches minutes apart, and this shared machine's
            // load drifts in between; alternating them frame by frame gives a ratio
            // that drift cannot bend.
            let (mut tf, mut tg) = (vec![], vec![]);
            for _ in 0..INTERLEAVED {
                let t = Instant::now();
                std::hint::black_box(fwd.run_pixels(px.view()).expect("run"));
                tf.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let out = guard.run_pixels(px.view()).expect("run");
                std::hint::black_box(response::analyze(out.response.view(), &cfg));
                tg.push(t.elapsed().as_secs_f64());
            }
            interleaved.push((name.to_string(), be_name, median(&mut tf), median(&mut tg)));
        }
        group.finish();
    }
    print_ratios(&interleaved);
}

/// Forward/guard pairs timed alternately after each model's criterion benches.
const INTERLEAVED: usize = 40;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const MODELS: &[&str] = &["squeezenet1.1", "mobilenet_v2", "efficientnet_lite0"];

/// Guard frame / forward per model and backend: from this run's criterion medians, and
/// from the interleaved pairs (model, backend, forward s, guard s).
fn print_ratios(interleaved: &[(String, String, f64, f64)]) {
    let root = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let median = |group: &str, bench: &str| -> Option<f64> {
        let p = root
            .join("criterion")
            .join(group)
            .join(bench)
            .join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    println!(
        "\n{:<20}{:<10}{:>12}{:>14}{:>8}   interleaved ({INTERLEAVED} pairs): forward, guard, ratio",
        "model", "backend", "forward ms", "guard ms", "ratio"
    );
    for name in MODELS {
        for be in ["tract", "ort-cpu"] {
            if let (Some(f), Some(g)) = (
                median(name, &format!("{be}_forward")),
                median(name, &format!("{be}_guard_frame")),
            ) {
                let il = interleaved
                    .iter()
                    .find(|(m, b, _, _)| m == name && b == be)
                    .map(|(_, _, f, g)| {
                        format!("{:.2} ms, {:.2} ms, {:.2}x", f * 1e3, g * 1e3, g / f)
                    })
                    .unwrap_or_default();
                println!(
                    "{name:<20}{be:<10}{:>12.2}{:>14.2}{:>7.2}x   {il}",
                    f / 1e6,
                    g / 1e6,
                    g / f
                );
            }
        }
    }
}

criterion_group!(benches, entropy_bench, guard_bench);
criterion_main!(benches);
