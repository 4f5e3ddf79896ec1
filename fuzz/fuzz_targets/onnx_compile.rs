//! Mutated ONNX bytes → model decoder (FP16 → FP32 included) → guard-graph compiler.
//! Errors are fine; a panic, an abort or a runaway allocation is a finding.
#![no_main]
use advguard::engine::compile::{self, CompileOptions, Mode, Seed, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = advguard::onnx::decode(data) else {
        return;
    };
    // The image input as the product pins it: N = 1 and the manifest's square size. The
    // seeds declare 8×8; a mutated declaration is overridden, as Guard::open does.
    let _ = compile::image_input(&model);
    for (mode, seed, target) in [
        (Mode::Guided, Seed::LastConv, Target::Tract),
        (Mode::Plain, Seed::Top1, Target::OnnxRuntime),
    ] {
        let opts = CompileOptions {
            mode,
            seed,
            input_shape: Some([1, 3, 8, 8]),
            target,
        };
        let _ = compile::compile(&model, &opts);
    }
});
