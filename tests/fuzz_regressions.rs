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

/// The compiler's error on the `onnx_compile` regression input `name` (which decodes).
fn compile_error(name: &str, mode: Mode, seed: Seed, target: Target) -> String {
    let p = inputs("onnx_compile")
        .into_iter()
        .find(|p| p.ends_with(name))
        .unwrap_or_else(|| panic!("no regression input {name}"));
    let model = advguard::onnx::decode(&std::fs::read(p).unwrap()).unwrap();
    let opts = CompileOptions {
        mode,
        seed,
        input_shape: Some([1, 3, 8, 8]),
        target,
    };
    compile::compile(&model, &opts).unwrap_err().to_string()
}

/// `onnx_compile`: tract-onnx 0.23 panicked on a graph output that no node produces (`no
/// entry found for key`), on a Conv with a zero stride (`attempt to divide by zero`, also
/// in release builds) and on an AveragePool with fewer strides than kernel axes (`index out
/// of bounds`); `onnx::decode` now refuses each with one error line. The compiler refuses a
/// node with fewer inputs than its rule reads.
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
    let decoded = |name: &str| {
        let p = inputs("onnx_compile")
            .into_iter()
            .find(|p| p.file_name().is_some_and(|f| f == name))
            .unwrap_or_else(|| panic!("no regression input {name}"));
        advguard::onnx::decode(&std::fs::read(p).unwrap())
            .unwrap_err()
            .to_string()
    };
    let e = decoded("graph_output_not_produced.onnx");
    assert!(e.contains("graph output \"gemm13\" is not produced"), "{e}");
    let e = decoded("zero_stride.onnx");
    assert!(e.contains("strides [2, 0] must be positive"), "{e}");
    // tract indexed strides[1] of an AveragePool with a 2-D kernel and one stride.
    let e = decoded("pool_strides_shorter_than_kernel.onnx");
    assert!(
        e.contains("\"averagepool11\" (AveragePool): strides has 1 values for 2 spatial axes"),
        "{e}"
    );
    // tract-onnx panicked on a STRING initializer stored as raw bytes.
    let e = decoded("raw_tensor_of_unloadable_type.onnx");
    assert!(
        e.contains("tensor \"c5\": raw data of type STRING is not supported"),
        "{e}"
    );
    // The compiler indexed the input of a Softmax that had none (CI's 30-s smoke run).
    let e = compile_error(
        "softmax_without_inputs.onnx",
        Mode::Plain,
        Seed::Top1,
        Target::OnnxRuntime,
    );
    assert!(e.contains("(Softmax) has 0 input(s)"), "{e}");
    // tract-hir's Flatten indexed past its input's rank (axis 91 of a rank-4 tensor) inside
    // its shape analysis (the 300-s run after fix 7): contained, the model is refused.
    for (mode, seed, target) in [
        (Mode::Guided, Seed::LastConv, Target::Tract),
        (Mode::Plain, Seed::Top1, Target::OnnxRuntime),
    ] {
        let e = compile_error("flatten_axis_past_rank.onnx", mode, seed, target);
        eprintln!("flatten_axis_past_rank: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// `onnx_engine`: a mutated Reshape made tract infer dims whose product overflowed `usize`
/// in the compiler's seed search (debug builds panic, release builds wrap); the compiler
/// now refuses tensors over 2^28 elements. And a Conv with two pads for two spatial axes
/// made tract index past them (found in the 600-s run). And a Mul of an 8×8 map with a 3×1
/// gate (a Conv's asymmetric pads) made tract plan the guard graph for minutes (a libFuzzer
/// timeout in CI's smoke run); the compiler now refuses inputs that do not broadcast.
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
                assert!(
                    m.contains("elements") || m.contains("do not broadcast"),
                    "{m}"
                );
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
    let p = inputs("onnx_engine")
        .into_iter()
        .find(|p| p.ends_with("mul_of_shapes_that_do_not_broadcast.onnx"))
        .expect("regression input");
    let model = advguard::onnx::decode(&std::fs::read(p).unwrap()).unwrap();
    let opts = CompileOptions {
        input_shape: Some([1, 3, 8, 8]),
        ..Default::default()
    };
    let e = compile::compile(&model, &opts).unwrap_err().to_string();
    assert!(
        e.contains(
            "node \"mul10\" (Mul): inputs of shapes [1, 4, 8, 8] and [1, 4, 3, 1] do not broadcast"
        ),
        "{e}"
    );
    // tract indexed pads[2] of a 2-D Conv given two pads: `onnx::decode` refuses it.
    let p = inputs("onnx_engine")
        .into_iter()
        .find(|p| p.ends_with("conv_pads_two_values_for_2d.onnx"))
        .expect("regression input");
    let e = advguard::onnx::decode(&std::fs::read(p).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"conv16\" (Conv): pads has 2 values for 2 spatial axes"),
        "{e}"
    );
}
