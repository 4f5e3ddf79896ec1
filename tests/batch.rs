//! Batching across cameras: the three classifiers' forward graphs and SqueezeNet's guard graph,
//! rewritten for a batch, give on ONNX Runtime what the unchanged graphs give one frame at a
//! time; a graph whose batch-1 Reshape is left alone is caught by the same check.

use advguard::engine::batch::{check_batch, with_batch};
use advguard::engine::compile::CompileOptions;
use advguard::engine::guard::{graphs, open_engine};
use advguard::engine::manifest::Manifest;
use advguard::engine::{BackendKind, GuardOptions, ort_backend};
use ndarray::Array4;

fn need_ort() {
    assert!(
        ort_backend::available(),
        "ONNX Runtime is not loadable: run `bash scripts/setup.sh --deps` or set ORT_DYLIB_PATH"
    );
}

/// A real photo, preprocessed as the manifest says.
fn photo(m: &Manifest) -> Array4<f32> {
    let p = advguard::data_dir().join("images/dev/n01440764_tench.JPEG");
    let img = m.preprocess.load_image(&p).unwrap();
    let px = advguard::engine::preprocess::Preprocess::pixels(&img);
    m.preprocess.tensor(px.view())
}

fn options(compile: bool) -> GuardOptions {
    GuardOptions {
        model_path: None,
        backend: BackendKind::OrtCpu,
        compile: compile.then(CompileOptions::default),
    }
}

#[test]
fn batched_forward_graphs_match_single_runs_on_all_three_classifiers() {
    need_ort();
    for name in ["squeezenet1.1", "mobilenet_v2", "efficientnet_lite0"] {
        let m = Manifest::load(name).unwrap();
        let g = graphs(&m, &options(false)).unwrap();
        let one = photo(&m);
        let mut single = open_engine(&g.model, &m.input, g.shape, BackendKind::OrtCpu).unwrap();
        let (b3, rewritten) = with_batch(&g.model, &m.input, 3).unwrap();
        let mut shape = g.shape;
        shape[0] = 3;
        let mut batched = open_engine(&b3, &m.input, shape, BackendKind::OrtCpu)
            .unwrap_or_else(|e| panic!("{name}: batched graph does not load: {e}"));
        check_batch(single.as_mut(), batched.as_mut(), &one, 3)
            .unwrap_or_else(|e| panic!("{name} ({rewritten} Reshape targets rewritten): {e}"));
    }
}

#[test]
fn squeezenet_guard_graph_batches_with_the_same_response() {
    need_ort();
    let m = Manifest::load("squeezenet1.1").unwrap();
    let g = graphs(&m, &options(true)).unwrap();
    let one = photo(&m);
    let mut single = open_engine(&g.guard, &m.input, g.shape, BackendKind::OrtCpu).unwrap();
    let (b2, _) = with_batch(&g.guard, &m.input, 2).unwrap();
    let mut batched = open_engine(&b2, &m.input, [2, 3, 224, 224], BackendKind::OrtCpu).unwrap();
    check_batch(single.as_mut(), batched.as_mut(), &one, 2).unwrap();
}

/// MobileNetV2 reshapes its logits to `[1, 1000]`: batching only the input dimension must not
/// pass the check (it fails to run, or folds the batch into one row).
#[test]
fn a_batch_1_reshape_left_in_place_is_caught() {
    need_ort();
    let m = Manifest::load("mobilenet_v2").unwrap();
    let g = graphs(&m, &options(false)).unwrap();
    let (mut b2, rewritten) = with_batch(&g.model, &m.input, 2).unwrap();
    assert!(rewritten >= 1, "MobileNetV2 has a batch-1 Reshape target");
    // Undo the Reshape rewrite, keep the batched input.
    let orig = g.model.graph.as_ref().unwrap();
    let gr = b2.graph.as_mut().unwrap();
    gr.initializer.clone_from(&orig.initializer);
    gr.node.clone_from(&orig.node);
    let one = photo(&m);
    let mut single = open_engine(&g.model, &m.input, g.shape, BackendKind::OrtCpu).unwrap();
    let checked = open_engine(&b2, &m.input, [2, 3, 224, 224], BackendKind::OrtCpu)
        .map_err(|e| e.to_string())
        .and_then(|mut b| {
            check_batch(single.as_mut(), b.as_mut(), &one, 2).map_err(|e| e.to_string())
        });
    assert!(checked.is_err(), "an unbatched Reshape passed the check");
}
