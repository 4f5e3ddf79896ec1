//! Detector core on real data: the guard graph on tract and ONNX Runtime, the model lookup
//! and download path, the CLI's `explain` / `score`, and one clear error per bad input.

use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use advguard::engine::{BackendKind, Guard, GuardOptions, ort_backend, top_k};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output};

fn data() -> PathBuf {
    advguard::data_dir()
}

fn tench() -> PathBuf {
    data().join("images/dev/n01440764_tench.JPEG")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advguard"));
    c.env("ADVGUARD_MODELS", data().join("models"))
        .env("RUST_LOG", "error");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn open(name: &str, backend: BackendKind, compile: Option<CompileOptions>) -> Guard {
    let m = Manifest::load(name).unwrap();
    let path = data().join("models").join(&m.model.file);
    Guard::open(
        &m,
        &GuardOptions {
            model_path: Some(path),
            backend,
            compile,
        },
    )
    .unwrap()
}

fn pixels(g: &Guard, p: &std::path::Path) -> ndarray::Array3<f32> {
    Preprocess::pixels(&g.preprocess().load_image(p).unwrap())
}

#[test]
fn guard_class_output_equals_the_original_model() {
    let mut plain = open("squeezenet1.1", BackendKind::Tract, None);
    let mut guard = open(
        "squeezenet1.1",
        BackendKind::Tract,
        Some(CompileOptions::default()),
    );
    for f in [
        "n01440764_tench.JPEG",
        "n01530575_brambling.JPEG",
        "n01531178_goldfinch.JPEG",
    ] {
        let p = data().join("images/dev").join(f);
        if !p.exists() {
            continue;
        }
        let px = pixels(&guard, &p);
        let a = plain.run_pixels(px.view()).unwrap().probs();
        let b = guard.run_pixels(px.view()).unwrap();
        let bp = b.probs();
        let d = a
            .iter()
            .zip(&bp)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{f}: probabilities differ by {d}");
        assert!(b.response.iter().all(|v| v.is_finite()));
        assert!(
            b.response.iter().any(|v| *v != 0.0),
            "{f}: response is all zero"
        );
    }
}

/// The guard graph is portable: ONNX Runtime gives tract's logits and response.
#[test]
fn ort_matches_tract_on_every_model() {
    if !ort_backend::available() {
        eprintln!("SKIPPED: ONNX Runtime not loadable here (pip install onnxruntime)");
        return;
    }
    for name in ["squeezenet1.1", "mobilenet_v2", "efficientnet_lite0"] {
        for opts in [
            CompileOptions::default(),
            CompileOptions {
                mode: Mode::Plain,
                seed: Seed::Top1,
                input_shape: None,
                ..Default::default()
            },
        ] {
            let mut t = open(name, BackendKind::Tract, Some(opts.clone()));
            let mut o = open(name, BackendKind::OrtCpu, Some(opts.clone()));
            let px = pixels(&t, &tench());
            let (a, b) = (
                t.run_pixels(px.view()).unwrap(),
                o.run_pixels(px.view()).unwrap(),
            );
            let rel = |x: &[f32], y: &[f32]| {
                let num: f32 = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).powi(2))
                    .sum::<f32>()
                    .sqrt();
                let den: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt().max(1e-20);
                num / den
            };
            let rl = rel(&a.logits, &b.logits);
            let rr = rel(
                a.response.as_slice().unwrap(),
                b.response.as_slice().unwrap(),
            );
            assert!(
                rl < 1e-4,
                "{name} {:?}: logits differ (rel {rl})",
                opts.mode
            );
            assert!(
                rr < 1e-3,
                "{name} {:?}: response differs (rel {rr})",
                opts.mode
            );
        }
    }
}

#[test]
fn explain_lists_tench_and_writes_the_panel() {
    let dir = tempfile::tempdir().unwrap();
    let panel = dir.path().join("panel.png");
    let o = bin()
        .arg("explain")
        .arg(tench())
        .arg("-o")
        .arg(&panel)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let top5: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(top5.len(), 5, "{out}");
    assert!(
        top5.iter().any(|l| l.contains("tench")),
        "tench not in top 5:\n{out}"
    );
    assert!(out.contains("S̄ ="), "{out}");
    let img = image::open(&panel).unwrap();
    assert!(img.width() > 3 * 224 && img.height() >= 224);
}

/// Top-1 accuracy of SqueezeNet on the 500 dev photos through `advguard score` (ORT: 0.600 with
/// torchvision-style preprocessing on these 500; 0.614 on all 1000 sample photos).
#[test]
fn score_dev_accuracy_at_least_060() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("scores.csv");
    let o = bin()
        .arg("score")
        .arg(data().join("images/dev"))
        .arg("--labels")
        .arg(data().join("images/dev-labels.csv"))
        .arg("-o")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut rd = csv::Reader::from_path(&csv).unwrap();
    assert_eq!(
        rd.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "file",
            "class_index",
            "top1",
            "top1_prob",
            "correct",
            "entropy"
        ]
    );
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 500);
    let correct = rows.iter().filter(|r| &r[4] == "1").count();
    let acc = correct as f64 / rows.len() as f64;
    eprintln!("tract top-1 accuracy on dev: {acc:.4}");
    assert!(acc >= 0.60, "accuracy {acc}");
    assert!(
        rows.iter()
            .all(|r| r[5].parse::<f64>().is_ok_and(|e| e.is_finite() && e > 0.0))
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("top-1 accuracy") && stdout.contains("median"),
        "{stdout}"
    );
}

/// One HTTP server on loopback serving one file, for the download path.
fn serve(bytes: Vec<u8>, requests: usize) -> (String, std::thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let h = std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok(Some(req)) = server.recv_timeout(std::time::Duration::from_secs(60)) else {
                return;
            };
            let _ = req.respond(tiny_http::Response::from_data(bytes.clone()));
        }
    });
    (format!("http://127.0.0.1:{port}/SqueezeNet_fp16.onnx"), h)
}

fn manifest_with_url(url: &str, sha: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/engines/squeezenet1.1.toml"
    ))
    .unwrap();
    let mut out = String::new();
    let mut in_dl = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_dl = line.trim() == "[model.download]";
        }
        if line.starts_with("labels") {
            continue;
        }
        if in_dl && line.starts_with("url") {
            out.push_str(&format!("url = \"{url}\"\n"));
        } else if in_dl && line.starts_with("sha256") {
            out.push_str(&format!("sha256 = \"{sha}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The user path with no local model: download the published FP16 file from a (local) server,
/// check its sha256, convert to FP32 on load, and classify; the second run uses the cache.
#[test]
fn downloads_checks_and_converts_the_fp16_model() {
    let mut bytes = Vec::new();
    std::fs::File::open(data().join("models/squeezenet1.1-fp16.orig.onnx"))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let (url, server) = serve(bytes, 1);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sq.toml");
    let sha = "21f25e3d9254af93e6218a359469fac714a017b3f9035c0f5c4acbf9a3ff7233";
    std::fs::write(&manifest, manifest_with_url(&url, sha)).unwrap();
    let cache = dir.path().join("cache");
    for round in 0..2 {
        let o = Command::new(env!("CARGO_BIN_EXE_advguard"))
            .env_remove("ADVGUARD_MODELS")
            .env("ADVGUARD_CACHE", &cache)
            .env("RUST_LOG", "error")
            .args(["explain", "--model-name"])
            .arg(&manifest)
            .arg(tench())
            .output()
            .unwrap();
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        // No labels file in this set-up: class numbers are printed; tench is class 0.
        let first = out.lines().nth(1).unwrap_or("");
        assert!(first.contains("(class 0)"), "round {round}: {out}");
    }
    assert!(cache.join("squeezenet1.1-fp16.orig.onnx").exists());
    server.join().unwrap();
}

#[test]
fn download_with_a_wrong_checksum_is_refused_and_not_cached() {
    let (url, server) = serve(b"definitely not the model".to_vec(), 1);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sq.toml");
    std::fs::write(&manifest, manifest_with_url(&url, &"0".repeat(64))).unwrap();
    let cache = dir.path().join("cache");
    let o = Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env_remove("ADVGUARD_MODELS")
        .env("ADVGUARD_CACHE", &cache)
        .args(["explain", "--model-name"])
        .arg(&manifest)
        .arg(tench())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("sha256") && e.contains("does not match"), "{e}");
    assert!(!cache.join("squeezenet1.1-fp16.orig.onnx").exists());
    server.join().unwrap();
}

/// Each bad input: non-zero exit and exactly one `error:` line that names the problem.
fn one_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure");
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{e}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains(needle),
        "{needle:?} not in {e}"
    );
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Missing image.
    let o = bin()
        .args(["explain", "/nonexistent/cat.jpg"])
        .output()
        .unwrap();
    one_error(&o, "/nonexistent/cat.jpg");
    // Not an image.
    let txt = dir.path().join("notes.jpg");
    std::fs::write(&txt, "hello").unwrap();
    let o = bin().arg("explain").arg(&txt).output().unwrap();
    one_error(&o, "not a readable image");
    // Missing model.
    let o = bin()
        .args(["explain", "--model", "/nonexistent/model.onnx"])
        .arg(tench())
        .output()
        .unwrap();
    one_error(&o, "/nonexistent/model.onnx");
    // Corrupt ONNX.
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07garbage\xff\xff\xff").unwrap();
    let o = bin()
        .arg("explain")
        .arg("--model")
        .arg(&bad)
        .arg(tench())
        .output()
        .unwrap();
    one_error(&o, "not an ONNX model");
    // Wrong input size in a manifest.
    let m = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/engines/squeezenet1.1.toml"
    ))
    .unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(&wrong, m.replace("size = 224", "size = 200")).unwrap();
    let o = bin()
        .arg("explain")
        .arg("--model-name")
        .arg(&wrong)
        .arg(tench())
        .output()
        .unwrap();
    one_error(&o, "preprocess.size");
    // Unknown manifest key.
    let unk = dir.path().join("unk.toml");
    std::fs::write(&unk, m.replace("trace =", "tracee = \"x\"\ntrace =")).unwrap();
    let o = bin()
        .arg("explain")
        .arg("--model-name")
        .arg(&unk)
        .arg(tench())
        .output()
        .unwrap();
    one_error(&o, "tracee");
    // Labels that do not match the folder.
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, "file,class_index\nother.jpg,3\n").unwrap();
    let o = bin()
        .arg("score")
        .arg(data().join("images/dev"))
        .arg("--labels")
        .arg(&labels)
        .arg("-o")
        .arg(dir.path().join("s.csv"))
        .output()
        .unwrap();
    one_error(&o, "no label for");
}

#[test]
fn unsupported_op_is_named() {
    use advguard::onnx::{GraphBuilder, attr_int};
    let mut b = GraphBuilder::new(13);
    b.input("x", &[1, 3, 8, 8]);
    // LRN before the conv: the backward pass from the last conv must cross it.
    let lrn = b.node_named("LRN", &["x"], &["lrn_out"], vec![attr_int("size", 3)]);
    let w = b.init_f32("w", &[4, 3, 3, 3], vec![0.1; 108]);
    let c = b.node("Conv", &["lrn_out", &w], vec![attr_int("group", 1)]);
    let r = b.node("Relu", &[&c], vec![]);
    b.output(&r, None);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lrn.onnx");
    advguard::onnx::save(&b.build(), &p).unwrap();
    let o = bin()
        .arg("compile")
        .arg(&p)
        .arg("-o")
        .arg(dir.path().join("g.onnx"))
        .output()
        .unwrap();
    one_error(&o, "LRN");
    assert!(stderr(&o).contains(&lrn), "{}", stderr(&o));
}

#[test]
fn top_k_orders_by_score() {
    assert_eq!(top_k(&[0.1, 0.7, 0.2], 2), vec![1, 2]);
}
