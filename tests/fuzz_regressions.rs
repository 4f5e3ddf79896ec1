//! Inputs that crashed a fuzz target (fuzz/regressions/<target>/), replayed on the stable
//! toolchain through the same entry points as the targets: each must now end in an error,
//! never a panic. See docs/RELIABILITY.md.

use advguard::engine::compile::{self, CompileOptions, Mode, Seed, Target};
use advguard::engine::{BackendKind, guard::open_engine};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no regression inputs in {}", dir.display());
    v
}

/// `onnx_compile`: tract-onnx 0.23 panicked on a graph output that no node produces (`no
/// entry found for key`) and on a Conv with a zero stride (`attempt to divide by zero`, also
/// in release builds); `onnx::decode` now refuses both with one error line.
#[test]
fn onnx_compile_regressions_end_in_errors() {
    for p in inputs("onnx_compile") {
        let bytes = std::fs::read(&p).unwrap();
        let err = match advguard::onnx::decode(&bytes) {
            Err(e) => e.to_string(),
            Ok(model) => {
                let opts = CompileOptions {
                    mode: Mode::Guided,
                    seed: Seed::LastConv,
                    input_shape: Some([1, 3, 8, 8]),
                    target: Target::Tract,
                };
                match compile::compile(&model, &opts) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{}: compiled, expected an error", p.display()),
                }
            }
        };
        eprintln!("{}: {err}", p.display());
        assert!(!err.contains('\n'), "{err}");
    }
    let one = std::fs::read(inputs("onnx_compile")[0].clone()).unwrap();
    let e = advguard::onnx::decode(&one).unwrap_err().to_string();
    assert!(e.contains("graph output \"gemm13\" is not produced"), "{e}");
    let two = std::fs::read(inputs("onnx_compile")[1].clone()).unwrap();
    let e = advguard::onnx::decode(&two).unwrap_err().to_string();
    assert!(e.contains("strides [2, 0] must be positive"), "{e}");
}

/// `onnx_engine`: a mutated Reshape made tract infer dims whose product overflowed `usize`
/// in the compiler's seed search (debug builds panic, release builds wrap); the compiler
/// now refuses tensors over 2^28 elements.
#[test]
fn onnx_engine_regressions_end_in_errors() {
    for p in inputs("onnx_engine") {
        let bytes = std::fs::read(&p).unwrap();
        let Ok(model) = advguard::onnx::decode(&bytes) else {
            continue;
        };
        let shape = [1, 3, 8, 8];
        let opts = CompileOptions {
            input_shape: Some(shape),
            ..Default::default()
        };
        match compile::compile(&model, &opts) {
            Err(e) => {
                let m = e.to_string();
                eprintln!("{}: {m}", p.display());
                assert!(m.contains("elements"), "{m}");
            }
            Ok(graph) => {
                let (input, _) = compile::image_input(&model).unwrap();
                if let Ok(mut eng) = open_engine(&graph, &input, shape, BackendKind::Tract) {
                    let x = ndarray::Array4::<f32>::from_elem(shape, 0.5);
                    let _ = eng.run(x.view(), None);
                }
            }
        }
    }
}
