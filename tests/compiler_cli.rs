//! `advguard compile` end to end: success summary, and one clear error line with a
//! non-zero exit for a missing file, corrupt bytes and an unsupported op.

use advguard::onnx::{self, GraphBuilder, attr_int};
use std::process::Command;

fn advguard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_advguard"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("runs advguard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compile_squeezenet_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let model = advguard::data_dir().join("models/squeezenet1.1.onnx");
    let out = dir.path().join("guard.onnx");
    let (ok, stdout, stderr) = advguard(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--mode",
        "plain",
        "--seed",
        "input",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("66 ops in") && stdout.contains("logits, response"),
        "{stdout}"
    );
    let g = onnx::load(&out).unwrap();
    let names: Vec<String> = g
        .graph
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.clone())
        .collect();
    assert_eq!(names, vec!["data_0".to_string(), "seed".to_string()]);
}

#[test]
fn compile_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.onnx");
    let out = out.to_str().unwrap();

    let (ok, _, stderr) = advguard(&["compile", "/nonexistent/model.onnx", "-o", out]);
    assert!(!ok);
    assert!(
        stderr.contains("error: /nonexistent/model.onnx: cannot read"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07\x12garbage").unwrap();
    let (ok, _, stderr) = advguard(&["compile", bad.to_str().unwrap(), "-o", out]);
    assert!(!ok);
    assert!(stderr.contains("not an ONNX model"), "{stderr}");

    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w = b.init_f32("w", &[4, 3, 3, 3], vec![0.1; 108]);
    let c = b.node("Conv", &[&x, &w], vec![]);
    let l = b.node("LRN", &[&c], vec![attr_int("size", 3)]);
    let node = b.nodes.last().unwrap().name.clone();
    let w2 = b.init_f32("w", &[4, 4, 3, 3], vec![0.1; 144]);
    let c2 = b.node("Conv", &[&l, &w2], vec![]);
    let f = b.node("Flatten", &[&c2], vec![]);
    b.output(&f, None);
    let p = dir.path().join("lrn.onnx");
    onnx::save(&b.build(), &p).unwrap();
    let (ok, _, stderr) = advguard(&["compile", p.to_str().unwrap(), "-o", out]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("unsupported op \"LRN\" at node \"{node}\"")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn compile_centernet_person_channel_for_ort() {
    let dir = tempfile::tempdir().unwrap();
    let model = advguard::data_dir().join("models/centernet_mobilenetv3_coco.onnx");
    let out = dir.path().join("guard.onnx");
    let (ok, stdout, stderr) = advguard(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--seed",
        "tensor:tower_0/keypoints[0]",
        "--target",
        "ort",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("seed tensor:tower_0/keypoints[0]") && stdout.contains("target ort"),
        "{stdout}"
    );
    let g = onnx::load(&out).unwrap();
    let ops: Vec<String> = g
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect();
    // The ONNX Runtime form: comparison masks, no Sign.
    assert!(ops.iter().any(|o| o == "Greater") && !ops.iter().any(|o| o == "Sign"));

    let (ok, _, stderr) = advguard(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--seed",
        "tensor:tower_0/keypoints[80]",
    ]);
    assert!(!ok);
    assert!(stderr.contains("channel 80 is out of range"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let (ok, _, stderr) = advguard(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        "x.onnx",
        "--target",
        "gpu",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown target"), "{stderr}");
}
