//! Model manifest TOML → `Manifest::parse`; a manifest that parses then fits a small photo
//! with its preprocessing, as `score`/`explain` do with every photo.
#![no_main]
use advguard::engine::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text, "fuzz") else {
        return;
    };
    let img = image::RgbImage::from_pixel(5, 3, image::Rgb([10, 20, 30]));
    let fitted = m.preprocess.fit(&img);
    let px = advguard::engine::preprocess::Preprocess::pixels(&fitted);
    let _ = m.preprocess.tensor(px.view());
});
