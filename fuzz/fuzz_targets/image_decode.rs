//! Photo bytes (JPEG, PNG, or anything) → the decoder and fit of `explain`/`score`
//! (`Preprocess::decode_image`, the body of `load_image`), with a built-in manifest's settings.
#![no_main]
use advguard::engine::manifest::Manifest;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static MANIFEST: OnceLock<Manifest> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let m = MANIFEST.get_or_init(|| Manifest::load("squeezenet1.1").expect("built-in manifest"));
    if let Ok(img) = m.preprocess.decode_image(data, "fuzz") {
        assert_eq!(img.dimensions(), (m.preprocess.size, m.preprocess.size));
    }
});
