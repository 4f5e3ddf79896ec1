//! The patch signal's texture statistic against NumPy on real photos: the same boxes, the
//! gray frame as the mean of R, G, B, and `np.abs(np.diff(...))` along both axes, pooled.

use advguard::engine::manifest::Manifest;
use advguard::response::texture::box_texture;
use std::process::Command;

const NUMPY: &str = r#"
import sys, numpy as np
w, h = int(sys.argv[2]), int(sys.argv[3])
g = np.fromfile(sys.argv[1], np.uint8).reshape(h, w, 3).astype(np.float64).mean(axis=2)
for b in sys.argv[4:]:
    x, y, bw, bh = map(int, b.split(","))
    c = g[y:y + bh, x:x + bw]
    dx, dy = np.abs(np.diff(c, axis=1)), np.abs(np.diff(c, axis=0))
    print(repr(float((dx.sum() + dy.sum()) / (dx.size + dy.size))))
"#;

#[test]
fn box_texture_equals_numpy_on_real_photos() {
    let pre = Manifest::load("squeezenet1.1").unwrap().preprocess;
    let boxes = [
        [0u32, 0, 224, 224],
        [84, 84, 56, 56],
        [0, 150, 56, 56],
        [170, 3, 54, 40],
    ];
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "images/dev/n02669723_academic_gown.JPEG",
        "images/dev/n03777754_modem.JPEG",
        "images/dev/n01440764_tench.JPEG",
    ] {
        let img = pre
            .load_image(&advguard::data_dir().join(f))
            .expect("photo loads");
        let (w, h) = img.dimensions();
        let raw = dir.path().join("frame.rgb");
        std::fs::write(&raw, img.as_raw()).unwrap();
        let o = Command::new("python3")
            .arg("-c")
            .arg(NUMPY)
            .arg(&raw)
            .arg(w.to_string())
            .arg(h.to_string())
            .args(
                boxes
                    .iter()
                    .map(|b| format!("{},{},{},{}", b[0], b[1], b[2], b[3])),
            )
            .output()
            .expect("python3 runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reference: Vec<f64> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(reference.len(), boxes.len());
        for (b, r) in boxes.iter().zip(&reference) {
            let ours = box_texture(img.as_raw(), w, h, *b, (w, h)).unwrap();
            assert!(
                (ours - r).abs() < 1e-9,
                "{f} box {b:?}: ours {ours}, NumPy {r}"
            );
            assert!(ours > 0.0, "{f} box {b:?}: a real photo has texture");
        }
    }
}
