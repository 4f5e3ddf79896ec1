//! Detections of the CenterNet detector manifest: the decode on hand-made heat maps, the
//! manifest's checks, the detections on real photos and video against what the data README
//! reports (looked at by a person, with ONNX Runtime), on tract and ONNX Runtime, and the
//! Rust decode against an independent numpy decode of ONNX Runtime's own run of the model.

use advguard::engine::compile::{CompileOptions, Seed};
use advguard::engine::detect::{self, Decode, Detection, Peak};
use advguard::engine::manifest::{Manifest, ModelKind};
use advguard::engine::preprocess::Preprocess;
use advguard::engine::{BackendKind, Guard, GuardOptions, ort_backend};
use ndarray::{Array3, Axis, Ix3};
use std::path::{Path, PathBuf};
use std::process::Command;

const NAME: &str = "centernet_mobilenetv3_coco";
const PERSON: usize = 0;
const BICYCLE: usize = 1;
const CAR: usize = 2;
const DOG: usize = 16;
const BOTTLE: usize = 39;

fn data() -> PathBuf {
    advguard::data_dir()
}

fn model_path() -> PathBuf {
    data().join("models/centernet_mobilenetv3_coco.onnx")
}

fn photo(name: &str) -> PathBuf {
    data().join("images/dev").join(name)
}

fn need_ort() {
    assert!(
        ort_backend::available(),
        "ONNX Runtime is not loadable: run `bash scripts/setup.sh --deps` or set ORT_DYLIB_PATH"
    );
}

/// The guard graph with the manifest's default seed (the person channel).
fn guard(backend: BackendKind) -> Guard {
    Guard::open(
        &Manifest::load(NAME).unwrap(),
        &GuardOptions {
            model_path: Some(model_path()),
            backend,
            compile: Some(CompileOptions::default()),
        },
    )
    .expect("the detector manifest opens")
}

/// Detections of a photo (boxes in its own pixels) and the model input it was given.
fn detect_photo(g: &mut Guard, name: &str) -> (Vec<Detection>, ndarray::Array4<f32>) {
    let p = photo(name);
    let img = g.preprocess().load_image(&p).unwrap();
    let (w, h) = image::image_dimensions(&p).unwrap();
    let px = Preprocess::pixels(&img);
    let out = g.run_pixels(px.view()).unwrap();
    assert!(
        !out.response.is_empty(),
        "a guard frame of the detector gives a response too"
    );
    let dets = detect::detections(g, &out, w, h).unwrap();
    (dets, g.preprocess().tensor(px.view()))
}

fn of_class(d: &[Detection], c: usize) -> Vec<&Detection> {
    d.iter().filter(|d| d.class == c).collect()
}

// ---------------------------------------------------------------- decode on hand-made maps

fn heat(c: usize, h: usize, w: usize, cells: &[(usize, usize, usize, f32)]) -> Array3<f32> {
    let mut a = Array3::zeros((c, h, w));
    for &(k, y, x, v) in cells {
        a[[k, y, x]] = v;
    }
    a
}

fn at(p: &[Peak]) -> Vec<(usize, usize, usize)> {
    p.iter().map(|p| (p.class, p.row, p.col)).collect()
}

#[test]
fn equal_neighbours_in_the_window_are_all_peaks() {
    // Two equal cells side by side, and a 2×2 plateau: each equals its 3×3 maximum.
    let h = heat(
        1,
        8,
        8,
        &[
            (0, 1, 1, 0.6),
            (0, 1, 2, 0.6),
            (0, 5, 5, 0.5),
            (0, 5, 6, 0.5),
            (0, 6, 5, 0.5),
            (0, 6, 6, 0.5),
        ],
    );
    let p = detect::peaks(h.view(), 3, 0.1);
    assert_eq!(
        at(&p),
        vec![
            (0, 1, 1),
            (0, 1, 2),
            (0, 5, 5),
            (0, 5, 6),
            (0, 6, 5),
            (0, 6, 6)
        ]
    );
    // A larger neighbour anywhere in the 3×3 window (here diagonal) suppresses a cell.
    let h = heat(1, 4, 4, &[(0, 1, 1, 0.6), (0, 2, 2, 0.61)]);
    assert_eq!(at(&detect::peaks(h.view(), 3, 0.1)), vec![(0, 2, 2)]);
    // …but one two cells away does not, with a 3×3 window; it does with 5×5.
    let h = heat(1, 6, 6, &[(0, 1, 1, 0.6), (0, 3, 3, 0.61)]);
    assert_eq!(
        at(&detect::peaks(h.view(), 3, 0.1)),
        vec![(0, 1, 1), (0, 3, 3)]
    );
    assert_eq!(at(&detect::peaks(h.view(), 5, 0.1)), vec![(0, 3, 3)]);
}

#[test]
fn border_and_corner_cells_compare_with_the_cells_inside_only() {
    let h = heat(
        2,
        5,
        5,
        &[
            (0, 0, 0, 0.9), // corner
            (0, 4, 2, 0.8), // bottom edge
            (0, 2, 4, 0.4), // right edge, beaten by its inside neighbour
            (0, 2, 3, 0.5),
            (1, 4, 4, 0.7), // other channel: channels never suppress each other
            (1, 0, 0, 0.2), // same cell as channel 0's corner, weaker
        ],
    );
    let p = detect::peaks(h.view(), 3, 0.1);
    assert_eq!(
        at(&p),
        vec![(0, 0, 0), (0, 2, 3), (0, 4, 2), (1, 0, 0), (1, 4, 4)]
    );
}

#[test]
fn top_k_cuts_over_all_classes_and_cells_in_score_order() {
    let h = heat(
        3,
        6,
        6,
        &[
            (0, 0, 0, 0.50),
            (1, 3, 3, 0.90),
            (2, 5, 5, 0.70),
            (0, 4, 1, 0.70), // ties 0.70 with class 2: class-major order wins
            (2, 1, 4, 0.60),
        ],
    );
    let d = Decode {
        nms: 3,
        top_k: 3,
        threshold: 0.0,
    };
    let p = detect::top_peaks(h.view(), &d);
    assert_eq!(at(&p), vec![(1, 3, 3), (0, 4, 1), (2, 5, 5)]);
    assert_eq!(
        p.iter().map(|p| p.score).collect::<Vec<_>>(),
        vec![0.9, 0.7, 0.7]
    );
    let all = detect::top_peaks(
        h.view(),
        &Decode {
            top_k: 100,
            threshold: 0.3,
            ..d
        },
    );
    assert_eq!(all.len(), 5);
}

#[test]
fn the_threshold_keeps_equal_scores_and_drops_lower_ones_and_nan() {
    let mut h = heat(
        1,
        6,
        6,
        &[(0, 0, 0, 0.3), (0, 3, 3, 0.2999), (0, 5, 0, 1.0)],
    );
    h[[0, 0, 5]] = f32::NAN;
    let d = Decode {
        nms: 3,
        top_k: 100,
        threshold: 0.3,
    };
    let p = detect::top_peaks(h.view(), &d);
    assert_eq!(at(&p), vec![(0, 5, 0), (0, 0, 0)]);
    // Thresholding after the top-k cut or before it gives the same set.
    let cut = detect::top_peaks(h.view(), &Decode { top_k: 1, ..d });
    assert_eq!(at(&cut), vec![(0, 5, 0)]);
}

#[test]
fn boxes_are_edge_distances_from_four_times_the_cell_scaled_to_the_frame() {
    // 128×128 grid on a 512 input: stride 4. Peak at row 10, column 20 → centre (80, 40).
    let h = heat(2, 128, 128, &[(1, 10, 20, 0.8), (0, 127, 0, 0.5)]);
    let mut b = Array3::<f32>::zeros((4, 128, 128));
    for (k, v) in [12.0f32, 8.0, 20.0, 16.0].into_iter().enumerate() {
        b[[k, 10, 20]] = v;
    }
    // The bottom-left peak's box runs off the frame on every side: clipped.
    for (k, v) in [30.0f32, 600.0, 40.0, 50.0].into_iter().enumerate() {
        b[[k, 127, 0]] = v;
    }
    let labels = vec!["person".to_string(), "bicycle".to_string()];
    let d = detect::decode(
        h.view(),
        b.view(),
        &Decode::default(),
        (512, 512),
        (1024, 256),
        &labels,
    )
    .unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].class, d[0].label.as_str(), d[0].score),
        (1, "bicycle", 0.8)
    );
    // (80 − 12, 40 − 8, 80 + 20, 40 + 16) in 512 px, × (2, 0.5) to the 1024×256 frame.
    assert_eq!(d[0].bbox, [136.0, 16.0, 200.0, 28.0]);
    // Centre (0, 508): x0 = −30 → 0, y0 = −92 → 0, x1 = 40 × 2, y1 = 558 → 256.
    assert_eq!(d[1].bbox, [0.0, 0.0, 80.0, 256.0]);
    // No labels: the class number stands in.
    let d = detect::decode(
        h.view(),
        b.view(),
        &Decode::default(),
        (512, 512),
        (512, 512),
        &[],
    )
    .unwrap();
    assert_eq!(d[0].label, "class 1");
    // A box map off the heat map's grid is refused.
    let bad = Array3::<f32>::zeros((4, 64, 64));
    let e = detect::decode(
        h.view(),
        bad.view(),
        &Decode::default(),
        (512, 512),
        (512, 512),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("4×128×128"), "{e}");
}

// ---------------------------------------------------------------- the manifest

#[test]
fn the_detector_manifest_is_built_in_and_classifiers_stay_classifiers() {
    let m = Manifest::load(NAME).unwrap();
    assert_eq!(m.kind, ModelKind::Detector);
    assert_eq!(m.input, "tower_0/images");
    assert_eq!(m.preprocess.size, 512);
    assert_eq!((m.preprocess.mean, m.preprocess.std), ([0.0; 3], [1.0; 3]));
    let d = m.detector.as_ref().unwrap();
    assert_eq!(
        (d.heatmap.as_str(), d.boxes.as_str()),
        ("tower_0/keypoints", "tower_0/wh")
    );
    assert_eq!((d.nms, d.top_k, d.threshold), (3, 100, 0.3));
    assert_eq!(
        m.default_seed(),
        Some(Seed::Peaks {
            tensor: "tower_0/keypoints".into(),
            channels: vec![PERSON],
            window: 3,
            threshold: 0.3,
        })
    );
    assert_eq!(
        m.model.sha256.as_deref(),
        Some("4a3ba0f8e0e3dbf31af515781ecdec3dca32dc907bf6e84975beb936bc7606ea")
    );
    assert_eq!(
        advguard::engine::manifest::sha256_file(&model_path()).unwrap(),
        m.model.sha256.unwrap()
    );
    // The whole heat map of chosen classes, as the other seed a detector offers.
    let heat = Manifest::parse(
        &detector_toml(|t| {
            t.replace("seed = \"peaks\"", "seed = \"heatmap\"")
                .replace("seed_class = 0", "seed_class = [0, 2]")
        }),
        "heat.toml",
    )
    .unwrap();
    assert_eq!(
        heat.default_seed(),
        Some(Seed::Channel("tower_0/keypoints".into(), vec![PERSON, 2]))
    );
    for name in ["squeezenet1.1", "efficientnet_lite0", "mobilenet_v2"] {
        let c = Manifest::load(name).unwrap();
        assert_eq!(c.kind, ModelKind::Classifier, "{name}");
        assert!(c.detector.is_none());
        assert_eq!(c.default_seed(), c.trace.clone().map(Seed::Tensor));
    }
}

fn detector_toml(edit: impl Fn(String) -> String) -> String {
    edit(include_str!("../engines/centernet_mobilenetv3_coco.toml").to_string())
}

fn parse_err(text: &str) -> String {
    let e = Manifest::parse(text, "bad.toml").unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.starts_with("manifest bad.toml: "), "{e}");
    e
}

#[test]
fn a_bad_detector_manifest_is_one_error_naming_the_key() {
    let cases: Vec<(String, &str)> = vec![
        (
            detector_toml(|t| t.replace("top_k = 100", "topk = 100")),
            "topk",
        ),
        (
            detector_toml(|t| t.replace("kind = \"detector\"", "kind = \"segmenter\"")),
            "segmenter",
        ),
        (
            detector_toml(|t| t.replace("seed = \"peaks\"", "seed = \"hotspots\"")),
            "hotspots",
        ),
        (
            detector_toml(|t| t.replace("nms = 3", "nms = 4")),
            "detector.nms = 4",
        ),
        (
            detector_toml(|t| t.replace("threshold = 0.3", "threshold = 1.5")),
            "detector.threshold = 1.5",
        ),
        (
            detector_toml(|t| t.replace("resize = \"squash\"", "resize = \"short-side-crop\"")),
            "preprocess.resize",
        ),
        (
            detector_toml(|t| t.replace("kind = \"detector\"", "")),
            "kind = \"detector\"",
        ),
        (
            detector_toml(|t| {
                let a = t.find("[detector]").unwrap();
                let b = t.find("# No public ONNX URL").unwrap();
                format!("{}{}", &t[..a], &t[b..])
            }),
            "[detector] table",
        ),
        (
            detector_toml(|t| t.replace("labels = ", "output = \"logits\"\nlabels = ")),
            "key `output` is for classifiers",
        ),
    ];
    for (text, want) in cases {
        let e = parse_err(&text);
        eprintln!("{e}");
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }
    // A classifier manifest without `output` is refused too (it used to be required by serde).
    let sq =
        include_str!("../engines/squeezenet1.1.toml").replace("output = \"probabilities\"", "");
    assert!(parse_err(&sq).contains("missing key `output`"));
}

#[test]
fn a_detector_manifest_that_does_not_fit_its_model_fails_at_open_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            detector_toml(|t| {
                t.replace(
                    "heatmap = \"tower_0/keypoints\"",
                    "heatmap = \"tower_0/heat\"",
                )
            }),
            "detector.heatmap = \"tower_0/heat\" is not an output of",
        ),
        (
            detector_toml(|t| {
                t.replace("boxes = \"tower_0/wh\"", "boxes = \"tower_0/keypoints_x\"")
            }),
            "detector.boxes = \"tower_0/keypoints_x\" is not an output of",
        ),
        (
            // Heat map and boxes swapped: the boxes then have 80 channels.
            detector_toml(|t| {
                t.replace("heatmap = \"tower_0/keypoints\"", "heatmap = \"@\"")
                    .replace("boxes = \"tower_0/wh\"", "boxes = \"tower_0/keypoints\"")
                    .replace("heatmap = \"@\"", "heatmap = \"tower_0/wh\"")
            }),
            "detector.boxes \"tower_0/keypoints\" has shape [1, 80, 128, 128]",
        ),
        (
            detector_toml(|t| t.replace("seed_class = 0", "seed_class = 80")),
            "detector.seed_class = 80, but the heat map has 80 channels",
        ),
        (
            detector_toml(|t| t.replace("seed_class = 0", "seed_class = [0, 81]")),
            "detector.seed_class = 81, but the heat map has 80 channels",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let m = Manifest::load(p.to_str().unwrap()).unwrap();
        let e = match Guard::open(
            &m,
            &GuardOptions {
                model_path: Some(model_path()),
                backend: BackendKind::Tract,
                compile: Some(CompileOptions::default()),
            },
        ) {
            Ok(_) => panic!("case {i} opened"),
            Err(e) => e.to_string(),
        };
        eprintln!("{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }
}

// ---------------------------------------------------------------- real photos

/// The data README's look at the photos (ONNX Runtime, drawn and checked by a person):
/// five bottles at 0.51–0.73, two persons and a bicycle, a dog, six cars.
fn check_photos(backend: BackendKind) {
    let mut g = guard(backend);
    let be = g.backend().to_string();
    // Scores may move by this much between engines and resize filters (measured: ≤ 0.006).
    let tol = 0.02;

    let (d, _) = detect_photo(&mut g, "n02823428_beer_bottle.JPEG");
    eprintln!("{be} bottles: {d:?}");
    let b = of_class(&d, BOTTLE);
    assert_eq!(
        (b.len(), d.len()),
        (5, 5),
        "{be}: five bottles and nothing else"
    );
    let (lo, hi) = (b[b.len() - 1].score, b[0].score);
    assert!(
        (lo - 0.51).abs() < tol && (hi - 0.73).abs() < tol,
        "{be}: bottle scores {lo}–{hi}, README 0.51–0.73"
    );
    // Five separate bottles side by side: their boxes are left to right, not overlapping much.
    let mut xs: Vec<[f32; 4]> = b.iter().map(|d| d.bbox).collect();
    xs.sort_by(|a, b| a[0].total_cmp(&b[0]));
    for w in xs.windows(2) {
        assert!(
            w[0][2] < w[1][0] + 10.0,
            "{be}: bottle boxes overlap: {xs:?}"
        );
    }

    let (d, _) = detect_photo(&mut g, "n02835271_bicycle-built-for-two.JPEG");
    eprintln!("{be} tandem: {d:?}");
    let p = of_class(&d, PERSON);
    assert_eq!(
        (p.len(), d.len()),
        (2, 2),
        "{be}: two persons at the default 0.3"
    );
    // The bicycle scores 0.27, under the default threshold: it shows at 0.25.
    let bikes: Vec<Detection> = decode_at(&mut g, "n02835271_bicycle-built-for-two.JPEG", 0.25)
        .into_iter()
        .filter(|d| d.class == BICYCLE)
        .collect();
    assert!(
        !bikes.is_empty() && (bikes[0].score - 0.27).abs() < tol,
        "{be}: a bicycle at about 0.27 ({bikes:?})"
    );
    // The tandem is wider than each rider: its box spans both persons.
    let (x0, x1) = (
        p.iter().map(|d| d.bbox[0]).fold(f32::MAX, f32::min),
        p.iter().map(|d| d.bbox[2]).fold(0.0, f32::max),
    );
    assert!(
        bikes[0].bbox[0] < x0 + 20.0 && bikes[0].bbox[2] > x1 - 20.0,
        "{be}: bicycle {:?} spans the riders {x0}–{x1}",
        bikes[0].bbox
    );

    let (d, _) = detect_photo(&mut g, "n02099712_Labrador_retriever.JPEG");
    eprintln!("{be} labrador: {d:?}");
    assert!(
        !d.is_empty() && d[0].class == DOG,
        "{be}: the top detection is a dog: {d:?}"
    );
    assert_eq!(of_class(&d, DOG).len(), 1, "{be}: one dog");

    let (d, _) = detect_photo(&mut g, "n02930766_cab.JPEG");
    eprintln!("{be} cabs: {d:?}");
    assert_eq!(
        (of_class(&d, CAR).len(), d.len()),
        (6, 6),
        "{be}: six cars and nothing else"
    );
}

/// Detections of a photo decoded at another threshold than the manifest's.
fn decode_at(g: &mut Guard, name: &str, threshold: f32) -> Vec<Detection> {
    let p = photo(name);
    let img = g.preprocess().load_image(&p).unwrap();
    let (w, h) = image::image_dimensions(&p).unwrap();
    let out = g.run_pixels(Preprocess::pixels(&img).view()).unwrap();
    let spec = g.manifest().detector.clone().unwrap();
    let heat = out.output(&spec.heatmap).unwrap();
    let boxes = out.output(&spec.boxes).unwrap();
    let heat = heat
        .index_axis(Axis(0), 0)
        .into_dimensionality::<Ix3>()
        .unwrap();
    let boxes = boxes
        .index_axis(Axis(0), 0)
        .into_dimensionality::<Ix3>()
        .unwrap();
    let d = Decode {
        threshold,
        ..Decode::from(&spec)
    };
    detect::decode(heat, boxes, &d, (512, 512), (w, h), g.labels()).unwrap()
}

#[test]
fn photos_show_what_the_data_readme_saw_on_tract() {
    check_photos(BackendKind::Tract);
}

#[test]
fn photos_show_what_the_data_readme_saw_on_ort() {
    need_ort();
    check_photos(BackendKind::OrtCpu);
}

#[test]
fn tract_and_ort_give_the_same_detections() {
    need_ort();
    let (mut t, mut o) = (guard(BackendKind::Tract), guard(BackendKind::OrtCpu));
    for name in [
        "n02823428_beer_bottle.JPEG",
        "n02930766_cab.JPEG",
        "n02835271_bicycle-built-for-two.JPEG",
    ] {
        let (a, _) = detect_photo(&mut t, name);
        let (b, _) = detect_photo(&mut o, name);
        assert_eq!(a.len(), b.len(), "{name}: {a:?} vs {b:?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.class, y.class, "{name}");
            let ds = (x.score - y.score).abs();
            let db = x
                .bbox
                .iter()
                .zip(&y.bbox)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            eprintln!("{name}: {} score Δ {ds:.2e}, box Δ {db:.3} px", x.label);
            assert!(ds < 1e-4 && db < 0.5, "{name}: {x:?} vs {y:?}");
        }
    }
}

// ---------------------------------------------------------------- an independent decode

/// Runs the original model on ONNX Runtime from Python and decodes with numpy alone:
/// max-pool NMS by shifted slices of a −∞-padded map, a stable arg-sort for the top k, then the
/// threshold and the box formula. Reads the model input as raw little-endian f32 1×3×512×512.
const NUMPY_DECODE: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort
model, tensor, W, H, k, th = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
x = np.fromfile(tensor, dtype="<f4").reshape(1, 3, 512, 512)
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
hm, wh = s.run(["tower_0/keypoints", "tower_0/wh"], {"tower_0/images": x})
hm, wh = hm[0], wh[0]
C, R, Q = hm.shape
p = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
mx = np.max([p[:, dy:dy + R, dx:dx + Q] for dy in range(3) for dx in range(3)], axis=0)
keep = np.where(hm == mx, hm, 0.0).ravel()
order = np.argsort(-keep, kind="stable")[:k]
out = []
for i in order:
    if keep[i] < th:
        break
    c, r, q = np.unravel_index(i, hm.shape)
    l, t, rr, b = (float(v) for v in wh[:, r, q])
    sx, sy = 512 / Q, 512 / R
    box = [(sx * q - l) * W / 512, (sy * r - t) * H / 512, (sx * q + rr) * W / 512, (sy * r + b) * H / 512]
    box = [min(max(v, 0.0), lim) for v, lim in zip(box, [W, H, W, H])]
    out.append({"class": int(c), "row": int(r), "col": int(q), "score": float(keep[i]), "box": box})
print(json.dumps(out))
"#;

fn python_ok() -> bool {
    Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[derive(serde::Deserialize, Debug)]
struct PyDet {
    class: usize,
    row: usize,
    col: usize,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

fn numpy_decode(x: &ndarray::Array4<f32>, w: u32, h: u32, d: &Decode, tmp: &Path) -> Vec<PyDet> {
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(tmp, raw).unwrap();
    let o = Command::new("python3")
        .args(["-c", NUMPY_DECODE])
        .arg(model_path())
        .arg(tmp)
        .args([
            w.to_string(),
            h.to_string(),
            d.top_k.to_string(),
            d.threshold.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python decode failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Same peaks, scores within `score_tol`, boxes within 0.5 px. A peak present on one side only
/// is allowed where its score is within `score_tol` of the threshold or of the top-k cut (the
/// two runs may order or cut it differently), and nowhere else.
fn compare_with_numpy(backend: BackendKind, score_tol: f32) {
    if !python_ok() {
        eprintln!(
            "SKIPPED: python3 with onnxruntime and numpy is not available (`pip install onnxruntime numpy`)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut g = guard(backend);
    let be = g.backend().to_string();
    let spec = g.manifest().detector.clone().unwrap();
    for name in [
        "n02835271_bicycle-built-for-two.JPEG",
        "n02930766_cab.JPEG",
        "n02823428_beer_bottle.JPEG",
    ] {
        let p = photo(name);
        let img = g.preprocess().load_image(&p).unwrap();
        let (w, h) = image::image_dimensions(&p).unwrap();
        let px = Preprocess::pixels(&img);
        let x = g.preprocess().tensor(px.view());
        let out = g.run_pixels(px.view()).unwrap();
        let heat = out.output(&spec.heatmap).unwrap();
        let heat = heat
            .index_axis(Axis(0), 0)
            .into_dimensionality::<Ix3>()
            .unwrap();
        let boxes = out.output(&spec.boxes).unwrap();
        let boxes = boxes
            .index_axis(Axis(0), 0)
            .into_dimensionality::<Ix3>()
            .unwrap();
        // The manifest's decode, and a low threshold where the top-100 cut binds.
        for d in [
            Decode::from(&spec),
            Decode {
                threshold: 0.01,
                ..Decode::from(&spec)
            },
        ] {
            let ours = detect::top_peaks(heat, &d);
            let dets = detect::decode(heat, boxes, &d, (512, 512), (w, h), &[]).unwrap();
            assert_eq!(ours.len(), dets.len());
            let theirs = numpy_decode(&x, w, h, &d, &dir.path().join("x.f32"));
            let cut = ours.last().map_or(d.threshold, |p| p.score);
            let edge = |s: f32| {
                (s - d.threshold).abs() <= score_tol
                    || (ours.len() == d.top_k && (s - cut).abs() <= score_tol)
            };
            let (mut matched, mut worst_s, mut worst_b) = (0, 0f32, 0f32);
            for (p, det) in ours.iter().zip(&dets) {
                match theirs
                    .iter()
                    .find(|t| (t.class, t.row, t.col) == (p.class, p.row, p.col))
                {
                    Some(t) => {
                        matched += 1;
                        worst_s = worst_s.max((t.score - p.score).abs());
                        for (a, b) in det.bbox.iter().zip(&t.bbox) {
                            worst_b = worst_b.max((a - b).abs());
                        }
                    }
                    None => assert!(edge(p.score), "{be} {name}: peak {p:?} only in Rust"),
                }
            }
            for t in &theirs {
                if !ours
                    .iter()
                    .any(|p| (t.class, t.row, t.col) == (p.class, p.row, p.col))
                {
                    assert!(edge(t.score), "{be} {name}: peak {t:?} only in numpy");
                }
            }
            eprintln!(
                "{be} {name} threshold {}: {} peaks (numpy {}), {matched} matched, score Δ ≤ {worst_s:.2e}, box Δ ≤ {worst_b:.3} px",
                d.threshold,
                ours.len(),
                theirs.len()
            );
            assert!(matched + 2 >= ours.len().max(theirs.len()) && matched > 0);
            assert!(worst_s <= score_tol, "{be} {name}: score Δ {worst_s}");
            assert!(worst_b <= 0.5, "{be} {name}: box Δ {worst_b} px");
        }
    }
}

#[test]
fn rust_decode_equals_an_independent_numpy_decode_on_ort() {
    need_ort();
    compare_with_numpy(BackendKind::OrtCpu, 1e-4);
}

#[test]
fn rust_decode_on_tract_equals_the_numpy_decode_of_ort() {
    // The guard graph on tract, decoded in Rust, against the original model on ONNX Runtime,
    // decoded by numpy: the heat maps agree to about 1e-6 here, so the same 1e-4 holds.
    compare_with_numpy(BackendKind::Tract, 1e-4);
}

// ---------------------------------------------------------------- video

/// The data README saw the walking person at 0.34–0.63. Measured here at 1 frame per second
/// on ONNX Runtime: a person in 80 of 140 frames, the best person score per frame 0.435 (q25),
/// 0.559 (median), 0.620 (q75), 0.764 at most; never two persons at once; another class in 5.
/// tract runs every 5th of those frames (a 512-px guard frame costs it about a second) and
/// must give the same detections.
#[test]
fn the_walking_person_of_the_video_is_detected_at_the_readme_s_scores() {
    need_ort();
    let path = data().join("videos/one-by-one-person-detection.mp4");
    let clip = advguard::eval::video::footage::Clip::decode(&path, 512, Some(1.0)).unwrap();
    let (fw, fh) = (768, 432);
    let q = |v: &[f32], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mut g = guard(BackendKind::OrtCpu);
    let mut t = guard(BackendKind::Tract);
    let (mut tops, mut crowded, mut others, mut tall) = (vec![], 0, 0, 0);
    let mut worst = (0f32, 0f32);
    for (i, rgb) in clip.frames.iter().enumerate() {
        let out = g.run_rgb8(rgb, 512, 512).unwrap();
        let d = detect::detections(&g, &out, fw, fh).unwrap();
        let persons = of_class(&d, PERSON);
        others += usize::from(d.iter().any(|d| d.class != PERSON));
        crowded += usize::from(persons.len() > 1);
        if let Some(p) = persons.first() {
            // Boxes are in the 768×432 frame; partly visible at its edges, the person is
            // otherwise upright.
            let [x0, y0, x1, y1] = p.bbox;
            assert!(x1 <= fw as f32 && y1 <= fh as f32 && x0 < x1 && y0 < y1);
            tall += usize::from(y1 - y0 > x1 - x0);
            tops.push(p.score);
        }
        if i % 5 == 0 {
            let out = t.run_rgb8(rgb, 512, 512).unwrap();
            let e = detect::detections(&t, &out, fw, fh).unwrap();
            // A peak within tract's rounding of the threshold may show on one engine only.
            let firm = |v: &[Detection]| -> Vec<usize> {
                v.iter()
                    .filter(|d| d.score > 0.302)
                    .map(|d| d.class)
                    .collect()
            };
            assert_eq!(firm(&d), firm(&e), "frame {i}: ORT {d:?}, tract {e:?}");
            for (a, b) in d.iter().zip(&e).filter(|(a, b)| a.class == b.class) {
                worst.0 = worst.0.max((a.score - b.score).abs());
                for (x, y) in a.bbox.iter().zip(&b.bbox) {
                    worst.1 = worst.1.max((x - y).abs());
                }
            }
        }
    }
    tops.sort_by(f32::total_cmp);
    let n = clip.frames.len();
    eprintln!(
        "person in {} of {n} frames; best person score q25 {:.3}, median {:.3}, q75 {:.3}, max {:.3}; {crowded} frames with 2+ persons, {others} with another class, {tall} person boxes upright; tract vs ORT on every 5th frame: score Δ ≤ {:.1e}, box Δ ≤ {:.2} px",
        tops.len(),
        q(&tops, 0.25),
        q(&tops, 0.5),
        q(&tops, 0.75),
        q(&tops, 1.0),
        worst.0,
        worst.1
    );
    assert!(
        tops.len() * 5 >= n * 2,
        "a person in only {} of {n} frames",
        tops.len()
    );
    // The middle half of the frames lies in the README's range (±0.03 for the frames seen).
    assert!(
        q(&tops, 0.25) >= 0.34 - 0.03 && q(&tops, 0.75) <= 0.63 + 0.03,
        "person scores {:.3}–{:.3} (q25–q75), README 0.34–0.63",
        q(&tops, 0.25),
        q(&tops, 0.75)
    );
    assert!(
        crowded * 10 <= tops.len(),
        "{crowded} frames with several persons"
    );
    assert!(
        tall * 10 >= tops.len() * 8,
        "only {tall} person boxes upright"
    );
    assert!(others * 10 <= n, "{others} frames with other classes");
    assert!(worst.0 < 1e-4 && worst.1 < 0.5, "tract vs ORT: {worst:?}");
}

// ---------------------------------------------------------------- the CLI

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advguard"));
    c.env("ADVGUARD_MODELS", data().join("models"))
        .env("RUST_LOG", "error");
    c
}

#[test]
fn explain_and_score_print_the_detections_and_draw_them() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("bottles.png");
    let o = bin()
        .args(["explain", "--model-name", NAME, "--backend", "tract", "-o"])
        .arg(&png)
        .arg(photo("n02823428_beer_bottle.JPEG"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("{out}");
    assert!(
        out.contains("5 detection(s) (boxes x0, y0, x1, y1 in the 500×375 frame)"),
        "{out}"
    );
    assert_eq!(out.matches("  (class 39)").count(), 5, "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1. bottle 0.7")),
        "{out}"
    );
    // The panel's input tile carries the boxes: the tile differs from the plain photo tile
    // in the class colour along the drawn outlines.
    let panel = image::open(&png).unwrap().to_rgb8();
    let colour = advguard::viz::detections::colour(BOTTLE);
    let n = panel.pixels().filter(|p| p.0 == colour).count();
    assert!(n > 2000, "{n} box-coloured pixels in the panel");

    let csv = dir.path().join("s.csv");
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    for f in ["n02823428_beer_bottle.JPEG", "n02930766_cab.JPEG"] {
        std::fs::copy(photo(f), folder.join(f)).unwrap();
    }
    let o = bin()
        .args(["score", "--model-name", NAME, "--backend", "tract", "-o"])
        .arg(&csv)
        .arg(&folder)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let main = std::fs::read_to_string(&csv).unwrap();
    assert!(main.starts_with("file,detections,top_class,top_label,top_score,entropy\n"));
    assert!(
        main.contains("n02823428_beer_bottle.JPEG,5,39,bottle,0.7"),
        "{main}"
    );
    assert!(main.contains("n02930766_cab.JPEG,6,2,car,0.6"), "{main}");
    let rows = std::fs::read_to_string(dir.path().join("s-detections.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 5 + 6, "{rows}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("11 detections ->"));
}

#[test]
fn a_detector_manifest_off_its_model_is_one_error_line_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.toml");
    std::fs::write(
        &m,
        detector_toml(|t| t.replace("heatmap = \"tower_0/keypoints\"", "heatmap = \"heat\"")),
    )
    .unwrap();
    let o = bin()
        .args(["explain", "--backend", "tract", "--model-name"])
        .arg(&m)
        .arg(photo("n02823428_beer_bottle.JPEG"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {e}");
    assert!(
        lines[0].starts_with("error:")
            && lines[0].contains("detector.heatmap = \"heat\" is not an output"),
        "{e}"
    );
}

#[test]
fn a_detectors_class_scores_are_each_classs_strongest_cell() {
    need_ort();
    let mut g = guard(BackendKind::OrtCpu);
    let p = photo("n02823428_beer_bottle.JPEG");
    let px = Preprocess::pixels(&g.preprocess().load_image(&p).unwrap());
    for out in [
        g.run_pixels(px.view()).unwrap(),
        g.forward_rgb8(&px.iter().map(|v| *v as u8).collect::<Vec<u8>>(), 512, 512)
            .unwrap(),
    ] {
        // One score per class (80), not the 80×128×128 heat map.
        assert_eq!(out.logits.len(), 80);
        let heat = out
            .output("tower_0/keypoints")
            .expect("the heat map comes back");
        for (c, &l) in out.logits.iter().enumerate() {
            let best = heat
                .index_axis(ndarray::Axis(1), c)
                .iter()
                .copied()
                .fold(f32::MIN, f32::max)
                .clamp(1e-6, 1.0 - 1e-6);
            let p = 1.0 / (1.0 + (-l).exp());
            assert!(
                (p - best).abs() < 1e-4,
                "class {c}: sigmoid(logit) {p}, best cell {best}"
            );
        }
        // The five bottles make bottle (COCO 39) the top class.
        assert_eq!(advguard::engine::top_k(&out.logits, 1), vec![39]);
    }
}
