//! The model loader end to end, as `Guard::open` runs it on the tract backend: mutated ONNX
//! bytes → decode → compile → tract planning → one guard frame on a gray input.
#![no_main]
use advguard::engine::compile::{self, CompileOptions};
use advguard::engine::{BackendKind, guard::open_engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = advguard::onnx::decode(data) else {
        return;
    };
    let Ok((input, _)) = compile::image_input(&model) else {
        return;
    };
    let shape = [1, 3, 8, 8];
    let opts = CompileOptions {
        input_shape: Some(shape),
        ..Default::default()
    };
    let Ok(graph) = compile::compile(&model, &opts) else {
        return;
    };
    let Ok(mut engine) = open_engine(&graph, &input, shape, BackendKind::Tract) else {
        return;
    };
    let x = ndarray::Array4::<f32>::from_elem(shape, 0.5);
    let _ = engine.run(x.view(), None);
});
