//! Criterion benchmarks: local entropy on a 224×224 map, and one guard frame
//! (forward + guided backward + entropy) for SqueezeNet on tract and on ONNX Runtime CPU
//! in the same run, with the plain forward pass of each as the reference.
//!
//! `ADVGUARD_MODELS=../shared/data/models cargo bench --bench guard`

use advguard::engine::compile::CompileOptions;
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use advguard::engine::{BackendKind, Guard, GuardOptions, ort_backend};
use advguard::response::{self, ResponseConfig, entropy};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;

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

fn guard_bench(c: &mut Criterion) {
    let m = Manifest::load("squeezenet1.1").expect("manifest");
    let model = advguard::data_dir().join("models").join(&m.model.file);
    let img = m
        .preprocess
        .load_image(&advguard::data_dir().join("images/dev/n01440764_tench.JPEG"))
        .expect("photo");
    let px = Preprocess::pixels(&img);
    let cfg = ResponseConfig::default();
    let mut backends = vec![BackendKind::Tract];
    if ort_backend::available() {
        backends.push(BackendKind::OrtCpu);
    } else {
        eprintln!("ONNX Runtime not loadable: skipping the ORT reference");
    }
    let mut group = c.benchmark_group("squeezenet");
    group.sample_size(30);
    for be in backends {
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
        let name = fwd.backend().to_string();
        group.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| fwd.run_pixels(px.view()).expect("run"))
        });
        group.bench_function(format!("{name}/guard_frame"), |b| {
            b.iter(|| {
                let out = guard.run_pixels(px.view()).expect("run");
                response::analyze(out.response.view(), &cfg)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, entropy_bench, guard_bench);
criterion_main!(benches);
