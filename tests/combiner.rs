//! The learned combiner (issue 12 §3): its squeezers against numpy, its logistic regression
//! against an independent numpy IRLS and its own optimality condition, the dev/val split,
//! fit → save → load → same scores, and `explain`'s contributions summing to the logit.

use advguard::detector::Profile;
use advguard::detector::combiner::{self, Combiner, Features, objective_gradient};
use advguard::engine::BackendKind;
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use advguard::eval::combiner::file_digest;
use advguard::eval::detectors::Scorer;
use advguard::response::squeeze;
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data() -> PathBuf {
    advguard::data_dir()
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

/// Runs a python3 + numpy script with `input` on stdin; None (test skipped, said so) without them.
fn python(script: &str, input: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("python3 with numpy not found: the external check is skipped");
        return None;
    }
    let mut ch = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ch.stdin.take().unwrap().write_all(input).unwrap();
    let o = ch.wait_with_output().unwrap();
    assert!(o.status.success(), "python failed");
    Some(o.stdout)
}

fn photo(name: &str) -> Array3<f32> {
    let m = Manifest::load("squeezenet1.1").unwrap();
    let img = m
        .preprocess
        .load_image(&data().join("images/dev").join(name))
        .unwrap();
    Preprocess::pixels(&img)
}

#[test]
fn median_and_bit_depth_equal_numpy_on_a_real_photo() {
    let px = photo("n02669723_academic_gown.JPEG");
    let (h, w, _) = px.dim();
    let bytes: Vec<u8> = px.iter().map(|v| *v as u8).collect();
    // Independent: edge padding + np.median over the nine shifted views; numpy's rounding of
    // the bit-depth formula (round half to even, as Rust's round is half away from zero: the
    // products here are never exactly .5, so both agree).
    let script = format!(
        "import sys, numpy as np\n\
         a = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape({h},{w},3).astype(np.float64)\n\
         p = np.pad(a, ((1,1),(1,1),(0,0)), mode='edge')\n\
         v = np.stack([p[dy:dy+{h}, dx:dx+{w}] for dy in range(3) for dx in range(3)])\n\
         m = np.median(v, axis=0)\n\
         b = np.round(a/255*31)/31*255\n\
         sys.stdout.buffer.write(m.astype(np.float32).tobytes() + b.astype(np.float32).tobytes())\n"
    );
    let Some(out) = python(&script, &bytes) else {
        return;
    };
    let f: Vec<f32> = out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let n = h * w * 3;
    assert_eq!(f.len(), 2 * n);
    let med = squeeze::median3(px.view());
    let bad = med.iter().zip(&f[..n]).filter(|(a, b)| a != b).count();
    assert_eq!(bad, 0, "median differs from numpy at {bad} of {n} values");
    // The filter must change a real photo (else the comparison proves nothing).
    assert!(med.iter().zip(px.iter()).filter(|(a, b)| a != b).count() > n / 10);
    let bits = squeeze::bit_depth(px.view(), combiner::SQUEEZE_BITS);
    let worst = bits
        .iter()
        .zip(&f[n..])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "bit depth differs from numpy by {worst}");
}

#[test]
fn kl_l1_cosine_hand_checked() {
    let p = [0.5f32, 0.5, 0.0];
    let q = [0.25f32, 0.75, 0.0];
    // KL = 0.5 ln 2 + 0.5 ln(2/3)
    let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
    assert!((squeeze::kl(&p, &q) - want).abs() < 1e-6);
    assert!((squeeze::l1(&p, &q) - 0.5).abs() < 1e-6);
    let a = Array3::from_shape_vec((1, 1, 2), vec![1.0f32, 0.0]).unwrap();
    let b = Array3::from_shape_vec((1, 1, 2), vec![1.0f32, 1.0]).unwrap();
    let d = squeeze::cosine_distance(a.view(), b.view());
    assert!((d - (1.0 - 1.0 / 2f64.sqrt())).abs() < 1e-9);
    assert_eq!(squeeze::cosine_distance(a.view(), (&a * 0.0).view()), 1.0);
}

fn synthetic(n: usize, seed: u64) -> (Vec<String>, Vec<Vec<f64>>, Vec<bool>) {
    let names: Vec<String> = [
        combiner::F_MARGIN,
        combiner::F_MEDIAN_KL,
        combiner::F_BITS_L1,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut x, mut y) = (vec![], vec![]);
    for _ in 0..n {
        let r: Vec<f64> = (0..3).map(|_| rng.random_range(-2.0..2.0)).collect();
        let t = 0.5 + 2.0 * r[0] - 1.0 * r[1] + 0.0 * r[2];
        let p = 1.0 / (1.0 + (-t).exp());
        y.push(rng.random::<f64>() < p);
        x.push(r);
    }
    (names, x, y)
}

#[test]
fn logistic_fit_is_optimal_and_equals_numpy_irls() {
    let (names, x, y) = synthetic(400, 7);
    let l2 = 0.01;
    let c = Combiner::fit(&names, &x, &y, l2).unwrap();
    // Optimality on the standardised problem: the gradient vanishes at the fitted θ.
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..3).map(|j| (r[j] - c.mean[j]) / c.scale[j]).collect())
        .collect();
    let n1 = y.iter().filter(|v| **v).count() as f64;
    let n0 = y.len() as f64 - n1;
    let sw: Vec<f64> = y
        .iter()
        .map(|&p| if p { 0.5 / n1 } else { 0.5 / n0 })
        .collect();
    let theta: Vec<f64> = std::iter::once(c.bias)
        .chain(c.weights.iter().copied())
        .collect();
    let g = objective_gradient(&z, &y, &sw, l2, &theta);
    assert!(
        g.iter().all(|v| v.abs() < 1e-9),
        "gradient at the fit: {g:?}"
    );
    // The data came from weights (2, −1, 0) on raw features: the signs must come back.
    assert!(
        c.weights[0] > 0.5 && c.weights[1] < -0.2 && c.weights[2].abs() < 0.3,
        "{:?}",
        c.weights
    );
    // An independent implementation: IRLS in numpy on the same objective.
    let mut input = String::new();
    for (r, &p) in x.iter().zip(&y) {
        input += &format!("{} {} {} {}\n", r[0], r[1], r[2], p as u8);
    }
    // (A raw string: a `\` line continuation would strip the loop's indentation.)
    let script = r#"
import sys, numpy as np
d = np.loadtxt(sys.stdin); X = d[:, :3]; y = d[:, 3]
Z = (X - X.mean(0)) / X.std(0); A = np.hstack([np.ones((len(Z), 1)), Z])
s = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())
R = np.diag([0.0, 0.01, 0.01, 0.01]); t = np.zeros(4)
for _ in range(100):
    p = 1 / (1 + np.exp(-A @ t))
    g = A.T @ (s * (p - y)) + R @ t
    H = A.T @ (A * (s * p * (1 - p))[:, None]) + R
    t = t - np.linalg.solve(H, g)
print(' '.join(repr(float(v)) for v in t))
"#;
    let Some(out) = python(script, input.as_bytes()) else {
        return;
    };
    let t: Vec<f64> = String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    for (a, b) in theta.iter().zip(&t) {
        assert!((a - b).abs() < 1e-6, "ours {theta:?} vs numpy {t:?}");
    }
}

#[test]
fn fit_save_load_scores_the_same_and_contributions_sum_to_the_logit() {
    let (names, x, y) = synthetic(200, 3);
    let c = Combiner::fit(&names, &x, &y, 0.01).unwrap();
    let mut p = Profile::default();
    p.set_combiner("squeezenet1.1", c.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.toml");
    p.save(&path).unwrap();
    let q = Profile::load(&path).unwrap();
    let d = q.combiner("squeezenet1.1").unwrap();
    assert_eq!(d.features, c.features);
    for r in &x {
        let f = Features {
            values: names.iter().cloned().zip(r.iter().copied()).collect(),
        };
        let (a, terms) = c.score(&f).unwrap();
        let (b, _) = d.score(&f).unwrap();
        assert!((a - b).abs() < 1e-12, "{a} vs {b} after a TOML round trip");
        let sum: f64 = terms.iter().map(|t| t.1).sum();
        assert!((sum - a).abs() < 1e-12);
    }
    // A missing feature is one clear error naming it.
    let f = Features::default();
    let e = c.score(&f).unwrap_err().to_string();
    assert!(e.contains(combiner::F_MARGIN), "{e}");
}

#[test]
fn dev_and_val_photos_are_disjoint_by_content() {
    let digests = |dir: &Path| -> HashSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| file_digest(&e.unwrap().path()).unwrap())
            .collect()
    };
    let dev = digests(&data().join("images/dev"));
    let val = digests(&data().join("images/val"));
    assert!(
        dev.len() >= 500 && val.len() >= 650,
        "{} / {}",
        dev.len(),
        val.len()
    );
    assert_eq!(
        dev.intersection(&val).count(),
        0,
        "dev and val share photos"
    );
}

#[test]
fn combiner_features_agree_with_the_eval_harness() {
    let m = Manifest::load("squeezenet1.1").unwrap();
    let mut s = Scorer::open(&m, None, BackendKind::Tract)
        .unwrap()
        .with_combiner_features(&m, None, BackendKind::Tract)
        .unwrap();
    let px = photo("n01440764_tench.JPEG");
    let sc = s.score(px.view()).unwrap();
    for name in combiner::feature_names() {
        assert!(sc.values.contains_key(name), "eval lacks {name}");
    }
    // Computed independently by the library's feature code from one guard pass.
    let (guided, forward) = s.combiner_guards().unwrap();
    let (f, ms) = combiner::frame_features(
        px.view(),
        guided,
        forward,
        &[combiner::Pass::Median, combiner::Pass::BitDepth],
    )
    .unwrap();
    for (k, v) in &f.values {
        let e = sc.values[k];
        assert!(
            (v - e).abs() <= 1e-9 * v.abs().max(1.0),
            "{k}: {v} vs eval {e}"
        );
    }
    assert_eq!(ms.len(), 3, "{ms:?}");
}

fn photos(dir: &Path, sub: &str, labels_csv: &str, files: &[&str]) -> (PathBuf, PathBuf) {
    let all = std::fs::read_to_string(data().join("images").join(labels_csv)).unwrap();
    let img = dir.join(sub);
    std::fs::create_dir_all(&img).unwrap();
    let mut csv = String::from("file,class_index\n");
    for f in files {
        std::fs::copy(data().join("images").join(sub).join(f), img.join(f)).unwrap();
        let row = all.lines().find(|l| l.starts_with(f)).unwrap();
        csv += &format!("{f},{}\n", row.split(',').nth(1).unwrap());
    }
    let labels = dir.join(format!("{sub}.csv"));
    std::fs::write(&labels, csv).unwrap();
    (img, labels)
}

#[test]
fn cli_fit_on_dev_refuses_dev_judges_val_and_explain_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (dev, dev_csv) = photos(
        t,
        "dev",
        "dev-labels.csv",
        &[
            "n01440764_tench.JPEG",
            "n01484850_great_white_shark.JPEG",
            "n01530575_brambling.JPEG",
            "n01532829_house_finch.JPEG",
        ],
    );
    let mut val_files: Vec<String> = std::fs::read_dir(data().join("images/val"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    val_files.sort();
    let vf: Vec<&str> = val_files.iter().take(3).map(String::as_str).collect();
    let (val, val_csv) = photos(t, "val", "val-labels.csv", &vf);
    let rep = t.join("rep-dev");
    let o = bin()
        .args([
            "eval",
            "--attacks",
            "fgsm",
            "--combiner-features",
            "--images",
        ])
        .arg(&dev)
        .arg("--labels")
        .arg(&dev_csv)
        .arg("-o")
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(rep.join("combiner.md").exists());
    let prof = t.join("p.toml");
    let o = bin()
        .args([
            "fit",
            "--features",
            "primary,median",
            "--l2",
            "1",
            "--report",
        ])
        .arg(&rep)
        .arg("--images")
        .arg(&dev)
        .arg("--labels")
        .arg(&dev_csv)
        .arg("--profile")
        .arg(&prof)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = Profile::load(&prof).unwrap();
    let c = p.combiner("squeezenet1.1").unwrap();
    assert!(!c.fit.train_sha256.is_empty());
    assert!(c.passes().iter().all(|p| *p != combiner::Pass::BitDepth));
    // Judging on the photos it was fitted on is refused with one line naming the problem.
    let o = bin()
        .args(["eval", "--attacks", "fgsm", "--images"])
        .arg(&dev)
        .arg("--labels")
        .arg(&dev_csv)
        .arg("--combiner")
        .arg(&prof)
        .arg("-o")
        .arg(t.join("rep-bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("were used to fit the combiner"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // On val it runs and reports the combiner row.
    let o = bin()
        .args(["eval", "--attacks", "fgsm", "--images"])
        .arg(&val)
        .arg("--labels")
        .arg(&val_csv)
        .arg("--combiner")
        .arg(&prof)
        .arg("-o")
        .arg(t.join("rep-val"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(t.join("rep-val/combiner.md")).unwrap();
    assert!(md.contains(advguard::eval::combiner::COMBINER), "{md}");
    // explain: the printed contributions sum to the printed logit.
    let o = bin()
        .args(["explain", "--profile"])
        .arg(&prof)
        .arg(val.join(vf[0]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let logit: f64 = out
        .split("combiner logit = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no logit in {out}"));
    let terms: Vec<f64> = out
        .lines()
        .skip_while(|l| !l.contains("contributions:"))
        .skip(1)
        .take_while(|l| !l.contains("= sum"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(terms.len(), 1 + c.features.len(), "{out}");
    let sum: f64 = terms.iter().sum();
    assert!(
        (sum - logit).abs() < 1e-3,
        "terms {terms:?} sum to {sum}, logit {logit}"
    );
}
