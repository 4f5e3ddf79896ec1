//! Attacks and evaluation metrics.
//!
//! - Attacks on a small linear network built here, where the closest decision flip is known in
//!   closed form: each attack must find a flip, none may beat the analytic optimum, FGSM with
//!   ε = 0 changes nothing, one-pixel changes at most k pixels, boundary makes no gradient call.
//! - Metrics against hand-computed cases, ties included.
//! - The CLI on real photos: `attack` end to end, `eval` end to end and resumed, bad input.

use advguard::attack::boundary::Boundary;
use advguard::attack::deepfool::DeepFool;
use advguard::attack::eot::{Adam, Jitter, Transform};
use advguard::attack::fgsm::{MinimalFgsm, fgsm};
use advguard::attack::gradient::GradientAttack;
use advguard::attack::onepixel::OnePixel;
use advguard::attack::patch::{
    Patch, PatchAttack, PatchCache, PatchConfig, PatchKey, Placement, TrainStats,
};
use advguard::attack::pgd::Pgd;
use advguard::attack::{Attack, Forward, Oracle, argmax};
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::manifest::Manifest;
use advguard::engine::{BackendKind, Guard, GuardOptions};
use advguard::eval::metrics::{auc, precision_recall, threshold_at_fpr, tpr_at_fpr};
use advguard::onnx::{GraphBuilder, attr_int};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ------------------------------------------------------------ a linear network

const S: usize = 8;
const D: usize = S * S * 3;
const CLASSES: usize = 1000;
/// The label and the one rival class; every other class sits at a logit of about −1000.
const A: usize = 3;
const B: usize = 7;
const MEAN: f32 = 128.0;
const STD: f32 = 64.0;
/// The closest flip of the clean image, L∞ in pixel units.
const EPS_STAR: f32 = 2.5;

/// logits = W·((px − 128)/64) + b, on an 8×8 RGB input (model channel order = RGB, so the
/// flattened model input index of pixel (y, x, c) is c·64 + y·8 + x).
struct Linear {
    _dir: tempfile::TempDir,
    manifest: Manifest,
    model: PathBuf,
    /// Δ = w_A − w_B, indexed like the model input.
    delta: Vec<f32>,
    /// Clean image, 8-bit values, H×W×3.
    clean: Array3<f32>,
}

fn idx(y: usize, x: usize, c: usize) -> usize {
    c * S * S + y * S + x
}

fn linear() -> Linear {
    let mut rng = StdRng::seed_from_u64(7);
    let clean = Array3::from_shape_fn((S, S, 3), |_| {
        (MEAN + 40.0 * rng.random_range(-1.0f32..1.0)).round()
    });
    let mut w: Vec<f32> = (0..CLASSES * D)
        .map(|_| rng.random_range(-1.0f32..1.0) * 0.05)
        .collect();
    // A per-channel part of w_A that is the same at every position, so that a *universal*
    // patch (placed anywhere) can flip the decision too.
    for y in 0..S {
        for x in 0..S {
            for (c, o) in [0.04f32, -0.04, 0.04].into_iter().enumerate() {
                w[A * D + idx(y, x, c)] += o;
            }
        }
    }
    let delta: Vec<f32> = (0..D).map(|i| w[A * D + i] - w[B * D + i]).collect();
    let xt = |y, x, c| (clean[[y, x, c]] - MEAN) / STD;
    let mut dot = 0f32;
    for y in 0..S {
        for x in 0..S {
            for c in 0..3 {
                dot += delta[idx(y, x, c)] * xt(y, x, c);
            }
        }
    }
    let l1: f32 = delta.iter().map(|v| v.abs()).sum();
    // Margin z_A − z_B = EPS_STAR/STD·‖Δ‖₁: an L∞ step of EPS_STAR along −sign(Δ) just flips it.
    let margin = EPS_STAR / STD * l1;
    let mut bias = vec![-1000f32; CLASSES];
    bias[B] = 0.0;
    bias[A] = margin - dot;
    let mut b = GraphBuilder::new(13);
    let x = b.input("image", &[1, 3, S, S]);
    let f = b.node("Flatten", &[&x], vec![attr_int("axis", 1)]);
    let wn = b.init_f32("w", &[CLASSES, D], w);
    let bn = b.init_f32("b", &[CLASSES], bias);
    let y = b.node("Gemm", &[&f, &wn, &bn], vec![attr_int("transB", 1)]);
    b.output(&y, Some(&[1, CLASSES]));
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("linear.onnx");
    advguard::onnx::save(&b.build(), &model).unwrap();
    let manifest = Manifest::parse(
        &format!(
            r#"name = "linear"
input = "image"
output = "logits"
[preprocess]
size = {S}
channels = "rgb"
mean = [{MEAN}, {MEAN}, {MEAN}]
std = [{STD}, {STD}, {STD}]
resize = "squash"
[model]
file = "linear.onnx"
"#
        ),
        "linear",
    )
    .unwrap();
    Linear {
        _dir: dir,
        manifest,
        model,
        delta,
        clean,
    }
}

impl Linear {
    fn oracle(&self) -> Oracle {
        Oracle::open(&self.manifest, Some(&self.model), BackendKind::Tract).unwrap()
    }
    fn seeded_guard(&self) -> Guard {
        Guard::open(
            &self.manifest,
            &GuardOptions {
                model_path: Some(self.model.clone()),
                backend: BackendKind::Tract,
                compile: Some(CompileOptions {
                    mode: Mode::Plain,
                    seed: Seed::Input,
                    input_shape: None,
                    ..Default::default()
                }),
            },
        )
        .unwrap()
    }
    /// The smallest L2 perturbation (pixel units) that reaches the A/B boundary.
    fn l2_star(&self) -> f32 {
        let l1: f32 = self.delta.iter().map(|v| v.abs()).sum();
        let l2: f32 = self.delta.iter().map(|v| v * v).sum::<f32>().sqrt();
        EPS_STAR * l1 / l2
    }
    /// Margin z_A − z_B at an image.
    fn margin(&self, px: &Array3<f32>) -> f32 {
        let mut m = EPS_STAR / STD * self.delta.iter().map(|v| v.abs()).sum::<f32>();
        for y in 0..S {
            for x in 0..S {
                for c in 0..3 {
                    m += self.delta[idx(y, x, c)] * (px[[y, x, c]] - self.clean[[y, x, c]]) / STD;
                }
            }
        }
        m
    }
    /// How much setting one pixel to its best extreme can lower the margin, per location.
    fn pixel_gain(&self, y: usize, x: usize) -> f32 {
        (0..3)
            .map(|c| {
                let d = self.delta[idx(y, x, c)];
                let v = self.clean[[y, x, c]];
                if d > 0.0 {
                    d * v / STD
                } else {
                    -d * (255.0 - v) / STD
                }
            })
            .sum()
    }
}

fn check_8bit(px: &Array3<f32>) {
    assert!(
        px.iter()
            .all(|v| *v == v.round() && (0.0..=255.0).contains(v)),
        "not an 8-bit image"
    );
}

#[test]
fn the_linear_network_is_what_the_attacks_assume() {
    let n = linear();
    let mut o = n.oracle();
    let l = o.logits(n.clean.view()).unwrap();
    assert_eq!(argmax(&l), A);
    let m = l[A] - l[B];
    assert!(
        (m - n.margin(&n.clean)).abs() < 1e-3 * m.abs().max(1.0),
        "{m} vs {}",
        n.margin(&n.clean)
    );
}

#[test]
fn fgsm_zero_eps_is_identity_and_minimal_eps_is_the_analytic_one() {
    let n = linear();
    let mut g = n.seeded_guard();
    let same = fgsm(&mut g, n.clean.view(), A, 0.0, None).unwrap();
    assert_eq!(same, n.clean, "FGSM with ε = 0 changed the image");
    // Just below the analytic flip distance nothing flips; just above it does.
    let below = fgsm(&mut g, n.clean.view(), A, EPS_STAR.floor(), None).unwrap();
    assert_eq!(
        argmax(
            &g.run_pixels_seeded(below.view(), &[0.0; CLASSES])
                .unwrap()
                .logits
        ),
        A
    );
    let above = fgsm(&mut g, n.clean.view(), A, EPS_STAR.ceil(), None).unwrap();
    check_8bit(&above);
    let l = g
        .run_pixels_seeded(above.view(), &[0.0; CLASSES])
        .unwrap()
        .logits;
    assert_eq!(argmax(&l), B);
    // Targeted at B reaches B too.
    let t = fgsm(&mut g, n.clean.view(), A, EPS_STAR.ceil(), Some(B)).unwrap();
    let l = g
        .run_pixels_seeded(t.view(), &[0.0; CLASSES])
        .unwrap()
        .logits;
    assert_eq!(argmax(&l), B);
    assert!(fgsm(&mut g, n.clean.view(), A, -1.0, None).is_err());

    let mut o = n.oracle();
    let r = MinimalFgsm { max_eps: 8.0 }
        .run(&mut o, n.clean.view(), A, 0)
        .unwrap();
    assert!(r.success && r.float_success);
    assert_eq!(r.linf, EPS_STAR.ceil(), "minimal ε should be ⌈ε*⌉");
    assert_eq!(r.iterations, EPS_STAR.ceil() as u32);
    assert_eq!(r.target_class, B);
    assert!(r.calls.gradient == 1, "{:?}", r.calls);
}

#[test]
fn gradient_pgd_and_deepfool_flip_without_beating_the_optimum() {
    let n = linear();
    let l2s = n.l2_star();
    let mut o = n.oracle();
    for atk in [
        Box::new(GradientAttack { max_eps: 8.0 }) as Box<dyn Attack>,
        Box::new(Pgd::default()),
        Box::new(DeepFool::default()),
    ] {
        let r = atk.run(&mut o, n.clean.view(), A, 1).unwrap();
        check_8bit(&r.adversarial);
        assert!(r.success, "{} did not flip: {r:?}", atk.name());
        assert!(n.margin(&r.adversarial) < 0.0, "{}", atk.name());
        assert_eq!(r.target_class, B);
        // No image on the other side is closer than the analytic optimum (8-bit rounding can
        // only help by a fraction of a gray level per pixel).
        assert!(r.linf >= EPS_STAR - 0.5, "{}: L∞ {}", atk.name(), r.linf);
        assert!(
            r.l2 >= 0.8 * l2s,
            "{}: L2 {} < optimum {l2s}",
            atk.name(),
            r.l2
        );
        if atk.name() == "pgd" {
            assert!(r.linf <= 4.0, "PGD left its ε-ball: {}", r.linf);
        }
        if atk.name() == "deepfool" {
            // DeepFool walks straight to the closest boundary of a linear model.
            assert!(r.l2 <= 1.3 * l2s, "DeepFool L2 {} vs optimum {l2s}", r.l2);
            assert!(r.calls.gradient >= 1);
        }
    }
}

#[test]
fn onepixel_changes_at_most_k_pixels_and_boundary_never_asks_for_gradients() {
    let n = linear();
    let best = (0..S)
        .flat_map(|y| (0..S).map(move |x| (y, x)))
        .map(|(y, x)| n.pixel_gain(y, x))
        .fold(0f32, f32::max);
    let m0 = n.margin(&n.clean);
    assert!(
        best > m0,
        "no single-pixel flip exists: gain {best} ≤ margin {m0}"
    );
    let mut o = n.oracle();
    // A larger budget than the default (which is sized for 224×224 photos): the point here is
    // that DE finds a flip that is known to exist, on a 64-pixel image.
    let atk = OnePixel {
        pixels: 1,
        population: 40,
        generations: 20,
        ..OnePixel::default()
    };
    let r = atk.run(&mut o, n.clean.view(), A, 3).unwrap();
    let changed = (0..S)
        .flat_map(|y| (0..S).map(move |x| (y, x)))
        .filter(|&(y, x)| (0..3).any(|c| r.adversarial[[y, x, c]] != n.clean[[y, x, c]]))
        .count();
    assert!(changed <= 1, "one-pixel changed {changed} pixels");
    assert!(r.success, "one-pixel found no flip: {r:?}");
    assert_eq!(r.calls.gradient, 0);
    let k3 = OnePixel::default();
    let r = k3.run(&mut o, n.clean.view(), A, 4).unwrap();
    let changed = (0..S)
        .flat_map(|y| (0..S).map(move |x| (y, x)))
        .filter(|&(y, x)| (0..3).any(|c| r.adversarial[[y, x, c]] != n.clean[[y, x, c]]))
        .count();
    assert!(changed <= k3.pixels, "k = 3 changed {changed} pixels");

    let mut o = n.oracle();
    let before = o.calls();
    let bd = Boundary::default();
    let r = bd.run(&mut o, n.clean.view(), A, 5).unwrap();
    let used = o.calls() - before;
    assert_eq!(used.gradient, 0, "boundary asked for gradients");
    assert!(
        used.forward > 0 && used.forward <= bd.max_queries as u64 + 1,
        "{used:?}"
    );
    assert_eq!(used, r.calls);
    assert!(r.success);
    check_8bit(&r.adversarial);
    assert!(n.margin(&r.adversarial) < 0.0);
    assert!(r.l2 >= 0.8 * n.l2_star());
}

/// Jittered copies of the linear network's clean image (8-bit).
fn jittered(n: &Linear, k: usize, seed: u64) -> Vec<Array3<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..k)
        .map(|_| {
            n.clean
                .mapv(|v| (v + rng.random_range(-3.0f32..=3.0)).round())
        })
        .collect()
}

fn small_patch(target: Option<usize>, steps: u32) -> PatchConfig {
    PatchConfig {
        area: 0.25,
        target,
        steps,
        batch: 2,
        lr: 16.0,
        jitter: Jitter::position_only(),
    }
}

/// Share of `imgs` the patch fools, each at its own random placement.
fn fooled(o: &mut Oracle, p: &Patch, imgs: &[Array3<f32>]) -> f64 {
    let atk = PatchAttack { patch: p.clone() };
    let ok = imgs
        .iter()
        .enumerate()
        .filter(|(i, t)| atk.run(o, t.view(), A, *i as u64).unwrap().success)
        .count();
    ok as f64 / imgs.len() as f64
}

#[test]
fn a_universal_patch_trained_on_some_images_flips_others() {
    let n = linear();
    let train = jittered(&n, 4, 11);
    let test = jittered(&n, 6, 12);
    let labels = vec![A; train.len()];
    let mut o = n.oracle();
    let (untrained, _) = Patch::train(
        &mut o,
        &train,
        &labels,
        &small_patch(Some(B), 0),
        9,
        |_, _| {},
    )
    .unwrap();
    let before = o.calls();
    let (patch, stats) = Patch::train(
        &mut o,
        &train,
        &labels,
        &small_patch(Some(B), 40),
        9,
        |_, _| {},
    )
    .unwrap();
    // Each step: batch × (one forward, and one gradient unless the loss is flat).
    let used = o.calls() - before;
    assert_eq!(
        (stats.forward_calls, stats.gradient_calls),
        (used.forward, used.gradient)
    );
    assert_eq!(used.forward, 80);
    assert!(used.gradient <= 80);
    assert_eq!(patch.side(), 4);
    check_8bit(&patch.pixels);
    // Training raises held-out success over the untrained (random) patch of the same size.
    let (s0, s1) = (
        fooled(&mut o, &untrained, &test),
        fooled(&mut o, &patch, &test),
    );
    assert!(s0 < 0.5 && s1 == 1.0, "untrained {s0}, trained {s1}");
    let atk = PatchAttack { patch };
    for (i, t) in test.iter().enumerate() {
        assert_eq!(argmax(&o.logits(t.view()).unwrap()), A);
        let r = atk.run(&mut o, t.view(), A, i as u64).unwrap();
        let b = r.patch_box.unwrap();
        assert_eq!((b[2], b[3]), (4, 4));
        // Only the patch's box changed.
        for y in 0..S {
            for x in 0..S {
                let inside = x >= b[0] as usize
                    && x < (b[0] + b[2]) as usize
                    && y >= b[1] as usize
                    && y < (b[1] + b[3]) as usize;
                if !inside {
                    for c in 0..3 {
                        assert_eq!(r.adversarial[[y, x, c]], t[[y, x, c]]);
                    }
                }
            }
        }
        assert!(r.success, "patch failed on held-out image {i}: {r:?}");
    }
}

#[test]
fn an_untargeted_patch_lowers_the_true_class() {
    let n = linear();
    let train = jittered(&n, 4, 21);
    let test = jittered(&n, 6, 22);
    let labels = vec![A; train.len()];
    let mut o = n.oracle();
    let (p, _) = Patch::train(
        &mut o,
        &train,
        &labels,
        &small_patch(None, 40),
        3,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(p.target, None);
    assert_eq!(fooled(&mut o, &p, &test), 1.0);
    // It lowered the label's margin on every held-out image.
    for (i, t) in test.iter().enumerate() {
        let r = PatchAttack { patch: p.clone() }
            .run(&mut o, t.view(), A, i as u64)
            .unwrap();
        assert!(n.margin(&r.adversarial) < n.margin(t));
    }
}

#[test]
fn eot_transforms_stay_in_range_and_paste_8_bit() {
    let j = Jitter::default();
    assert_eq!((j.scale, j.rotation_deg), ((0.8, 1.2), 20.0));
    let mut rng = StdRng::seed_from_u64(5);
    let img = Array3::<f32>::from_elem((224, 224, 3), 100.0);
    let side = Patch::side_for(0.05, 224);
    assert_eq!(side, 50);
    let cfg = PatchConfig {
        area: 0.05,
        ..PatchConfig::default()
    };
    let p = Patch::noise_sticker(&cfg, 224, 1);
    let (mut lo, mut hi) = (f32::MAX, f32::MIN);
    for _ in 0..300 {
        let t = j.sample(side, 224, 224, &mut rng);
        let pl = t.placement;
        assert!((0.8..=1.2).contains(&pl.scale), "{t:?}");
        assert!(pl.angle.abs() <= 20f32.to_radians() + 1e-6, "{t:?}");
        assert!(
            t.brightness.abs() <= j.brightness && (t.contrast - 1.0).abs() <= j.contrast + 1e-6
        );
        lo = lo.min(pl.scale);
        hi = hi.max(pl.scale);
        let (x, b) = p.apply_transform(img.view(), &t);
        check_8bit(&x);
        // The transformed patch stays inside the image, and its box covers about scale² × area.
        assert!(b[0] + b[2] <= 224 && b[1] + b[3] <= 224, "{b:?}");
        let changed = x.iter().zip(img.iter()).filter(|(a, b)| a != b).count();
        let want = (side as f32 * pl.scale).powi(2) * 3.0;
        assert!(
            changed as f32 > 0.6 * want && (changed as f32) < 1.1 * want,
            "{changed} vs {want}"
        );
        // Colour: the same affine change on every pasted pixel, rounded and clipped.
        assert_eq!(
            t.colour(127.5),
            (127.5 + t.brightness).round().clamp(0.0, 255.0)
        );
    }
    // The ranges are used, not only their centre.
    assert!(lo < 0.85 && hi > 1.15, "{lo} {hi}");
    // Clipped colours pass no gradient; unclipped ones pass the contrast.
    let t = Transform {
        placement: Placement {
            cx: 0.0,
            cy: 0.0,
            scale: 1.0,
            angle: 0.0,
        },
        brightness: 40.0,
        contrast: 1.1,
    };
    assert_eq!(t.colour_grad(255.0), 0.0);
    assert!((t.colour_grad(100.0) - 1.1).abs() < 1e-6);
}

#[test]
fn adam_minimises_a_quadratic() {
    let mut x = vec![5.0f32, -3.0];
    let mut a = Adam::new(2);
    for _ in 0..500 {
        let g: Vec<f32> = x.iter().map(|v| 2.0 * (v - 1.0)).collect();
        a.step(&mut x, &g, 0.05);
    }
    assert!(x.iter().all(|v| (v - 1.0).abs() < 0.05), "{x:?}");
}

#[test]
fn the_patch_cache_hits_by_key_and_misses_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PatchCache {
        dir: dir.path().to_path_buf(),
    };
    let cfg = PatchConfig {
        area: 0.02,
        ..PatchConfig::default()
    };
    let key = PatchKey {
        model: "squeezenet1.1".into(),
        config: cfg.clone(),
        seed: 3,
        train_set: PatchKey::hash_names(["a.JPEG", "b.JPEG"]),
        adaptive: None,
    };
    assert!(cache.get(&key).is_none(), "empty cache hit");
    let p = Patch::noise_sticker(&cfg, 224, 4);
    let stats = TrainStats {
        seconds: 1.5,
        forward_calls: 10,
        gradient_calls: 9,
        penalty_calls: 0,
        train_success: 0.5,
    };
    cache.put(&key, &p, &stats).unwrap();
    let (q, st) = cache.get(&key).expect("cache miss on the same key");
    assert_eq!(q.pixels, p.pixels);
    assert_eq!((st.forward_calls, st.gradient_calls), (10, 9));
    assert_eq!(q.target, cfg.target);
    // Any change of model, area, target, seed, recipe or training photos is another patch.
    let mut other = vec![];
    for f in 0..6 {
        let mut k = key.clone();
        match f {
            0 => k.model = "mobilenet_v2".into(),
            1 => k.config.area = 0.05,
            2 => k.config.target = None,
            3 => k.seed = 4,
            4 => k.config.steps += 1,
            _ => k.train_set = PatchKey::hash_names(["a.JPEG"]),
        }
        assert_ne!(k.stem(), key.stem());
        assert!(cache.get(&k).is_none(), "hit on a different key {f}");
        other.push(k);
    }
    // A torn write (metadata missing) is a miss, not a wrong patch.
    std::fs::remove_file(dir.path().join(format!("{}.json", key.stem()))).unwrap();
    assert!(cache.get(&key).is_none());
}

#[test]
fn sticker_controls_are_pasted_like_the_patch() {
    let cfg = PatchConfig {
        area: 0.05,
        ..PatchConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(8);
    let photo = Array3::from_shape_fn((224, 224, 3), |(y, x, c)| {
        ((y * 3 + x * 5 + c * 7) % 256) as f32
    });
    let img = Array3::from_shape_fn((224, 224, 3), |_| rng.random_range(0.0f32..=255.0).round());
    let noise = Patch::noise_sticker(&cfg, 224, 1);
    let crop = Patch::photo_sticker(&cfg, photo.view(), 2);
    let side = Patch::side_for(cfg.area, 224);
    assert_eq!((noise.side(), crop.side()), (side, side));
    check_8bit(&noise.pixels);
    // The crop is a real window of the photo.
    let found = (0..=224 - side).any(|y0| {
        (0..=224 - side)
            .any(|x0| photo.slice(ndarray::s![y0..y0 + side, x0..x0 + side, ..]) == crop.pixels)
    });
    assert!(found, "the photo sticker is not a crop of the photo");
    // Same transformation, same footprint as a trained patch of that area.
    let trained = Patch {
        pixels: Array3::from_elem((side, side, 3), 7.0),
        target: Some(859),
        config: cfg.clone(),
    };
    for s in 0..20u64 {
        let mut r1 = StdRng::seed_from_u64(s);
        let mut r2 = StdRng::seed_from_u64(s);
        let mut r3 = StdRng::seed_from_u64(s);
        let t1 = trained.random_transform(224, 224, &mut r1);
        let t2 = noise.random_transform(224, 224, &mut r2);
        let t3 = crop.random_transform(224, 224, &mut r3);
        assert_eq!(t1, t2);
        assert_eq!(t1, t3);
        let b1 = trained.apply_transform(img.view(), &t1).1;
        assert_eq!(b1, noise.apply_transform(img.view(), &t2).1);
        assert_eq!(b1, crop.apply_transform(img.view(), &t3).1);
    }
    assert_eq!((noise.target, crop.target), (None, None));
}

// ------------------------------------------------------------ metrics

#[test]
fn metrics_match_hand_computed_cases() {
    // Pairs (adv, clean): 2>1, 2=2 (½), 2<3, 4>1, 4>2, 4>3 → 4.5 / 6.
    assert_eq!(auc(&[1.0, 2.0, 3.0], &[2.0, 4.0]), Some(0.75));
    // All tied: chance.
    assert_eq!(auc(&[5.0, 5.0], &[5.0, 5.0, 5.0]), Some(0.5));
    assert_eq!(auc(&[0.0], &[1.0]), Some(1.0));
    assert_eq!(auc(&[1.0], &[0.0]), Some(0.0));
    assert_eq!(auc(&[], &[1.0]), None);
    // Ties across and within: clean [1,1,2], adv [1,2,2] → wins: adv1 vs (1,1,2)=½+½+0;
    // adv2 vs (1,1,2)=1+1+½ twice → (1 + 2.5 + 2.5) / 9.
    let a = auc(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]).unwrap();
    assert!((a - 6.0 / 9.0).abs() < 1e-12, "{a}");

    let clean: Vec<f64> = (1..=10).map(|v| v as f64 / 10.0).collect();
    // 10% of 10 = 1 clean image may be flagged: the threshold is the 2nd largest (0.9).
    assert_eq!(threshold_at_fpr(&clean, 0.10), 0.9);
    assert_eq!(threshold_at_fpr(&clean, 0.0), 1.0);
    assert_eq!(threshold_at_fpr(&clean, 0.05), 1.0);
    assert_eq!(threshold_at_fpr(&clean, 1.0), f64::NEG_INFINITY);
    let (tpr, t) = tpr_at_fpr(&clean, &[0.95, 0.5, 0.9, 1.1], 0.10);
    assert_eq!((tpr, t), (0.5, 0.9));
    // Ties at the threshold are not flagged, so the clean FPR never exceeds the target.
    let tied = [1.0, 1.0, 1.0, 0.0];
    let t = threshold_at_fpr(&tied, 0.25);
    assert_eq!(t, 1.0);
    assert_eq!(tied.iter().filter(|&&s| s > t).count(), 0);
    // Precision / recall at 0.5: adv [0.6, 0.7, 0.4] → TP 2, FN 1; clean [0.1, 0.9] → FP 1.
    let (p, r) = precision_recall(&[0.1, 0.9], &[0.6, 0.7, 0.4], 0.5);
    assert!((p - 2.0 / 3.0).abs() < 1e-12 && (r - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(precision_recall(&[0.1], &[0.2], 0.5), (1.0, 0.0));
}

// ------------------------------------------------------------ CLI on real photos

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

/// A folder with a few real dev photos and their labels (copied into a temp dir, not the repo).
fn photos(files: &[(&str, usize)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    std::fs::create_dir(&img).unwrap();
    let mut csv = String::from("file,class_index\n");
    for (f, c) in files {
        std::fs::copy(data().join("images/dev").join(f), img.join(f)).unwrap();
        csv += &format!("{f},{c}\n");
    }
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    (dir, img, labels)
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).unwrap().lines().count()
}

#[test]
fn cli_attack_and_eval_end_to_end_and_resume() {
    let (dir, img, labels) = photos(&[
        ("n01440764_tench.JPEG", 0),
        ("n01530575_brambling.JPEG", 10),
    ]);
    let out = dir.path().join("adv");
    let o = bin()
        .args(["attack", "--attack", "fgsm", "--images"])
        .arg(&img)
        .arg("--labels")
        .arg(&labels)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    assert!(m.starts_with("file,label,success,gt_conf,target_class,target_conf,l2,linf,iterations,seconds,survives_quantisation"));
    let rows: Vec<&str> = m.lines().skip(1).collect();
    assert!(
        !rows.is_empty(),
        "no correctly classified photo was attacked"
    );
    for r in &rows {
        let f = r.split(',').next().unwrap();
        let png = image::open(out.join(f)).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (224, 224));
    }

    let rep = dir.path().join("report");
    let run = || {
        bin()
            .args(["eval", "--attacks", "fgsm", "--jobs", "1", "--images"])
            .arg(&img)
            .arg("--labels")
            .arg(&labels)
            .arg("-o")
            .arg(&rep)
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let n = lines(&rep.join("records.jsonl"));
    assert_eq!(n, 2 + rows.len(), "2 clean + one per attacked photo");
    for f in ["table1.md", "table1.csv", "table2.md", "table2.csv"] {
        assert!(rep.join(f).is_file(), "{f} missing");
    }
    let t1 = std::fs::read_to_string(rep.join("table1.md")).unwrap();
    assert!(t1.contains("S̄ guided last-conv signed/16"), "{t1}");
    // A second run finds everything cached and adds nothing.
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&rep.join("records.jsonl")), n);
}

#[test]
fn cli_eval_trains_patches_once_and_reports_stickers() {
    // One photo trains (files sorted: the tench), two are judged.
    let (dir, img, labels) = photos(&[
        ("n01440764_tench.JPEG", 0),
        ("n01530575_brambling.JPEG", 10),
        ("n01532829_house_finch.JPEG", 12),
    ]);
    let cache = dir.path().join("cache");
    let rep = dir.path().join("report");
    let run = || {
        bin()
            .env("ADVGUARD_CACHE", &cache)
            .args([
                "eval",
                "--attacks",
                "patch,patch-untargeted,stickers",
                "--jobs",
                "1",
            ])
            .args([
                "--patch-areas",
                "5",
                "--patch-train",
                "1",
                "--patch-steps",
                "3",
                "--patch-batch",
                "1",
            ])
            .args(["--patch-untargeted-area", "5", "--images"])
            .arg(&img)
            .arg("--labels")
            .arg(&labels)
            .arg("-o")
            .arg(&rep)
            .output()
            .unwrap()
    };
    let t = std::time::Instant::now();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let first = t.elapsed();
    let pngs: Vec<_> = std::fs::read_dir(cache.join("patches"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .collect();
    assert_eq!(
        pngs.len(),
        2,
        "one targeted and one untargeted patch in the cache"
    );
    let md = std::fs::read_to_string(rep.join("patch_table.md")).unwrap();
    for col in [
        "patch-5%",
        "patch-untargeted-5%",
        "sticker-noise-5%",
        "sticker-photo-5%",
        "concentration guided last-conv",
    ] {
        assert!(md.contains(col), "{col} missing from\n{md}");
    }
    assert!(rep.join("patch_table.csv").is_file());
    // Every stickered photo is scored (a control is judged whether or not it fooled the model).
    let recs = std::fs::read_to_string(rep.join("records.jsonl")).unwrap();
    let stickers: Vec<&str> = recs.lines().filter(|l| l.contains("\"sticker-")).collect();
    assert!(!stickers.is_empty());
    assert!(
        stickers.iter().all(|l| l.contains("\"values\"")),
        "an unscored sticker"
    );
    // A fresh report folder reuses the cached patches: no training the second time.
    std::fs::remove_dir_all(&rep).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let again = std::fs::read_dir(cache.join("patches")).unwrap().count();
    assert_eq!(again, 4, "the cache grew: a patch was retrained");
    let _ = first;
}

#[test]
fn bad_input_gives_one_clear_error() {
    let (dir, img, labels) = photos(&[("n01440764_tench.JPEG", 0)]);
    let out = dir.path().join("o");
    let o = bin()
        .args(["attack", "--attack", "nope", "--images"])
        .arg(&img)
        .arg("--labels")
        .arg(&labels)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unknown attack \"nope\"") && e.contains("fgsm"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let o = bin()
        .args(["eval", "--attacks", "fgsm,bogus", "--images"])
        .arg(&img)
        .arg("--labels")
        .arg(&labels)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown attack \"bogus\""),
        "{}",
        stderr(&o)
    );

    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, "file,class_index\nsomething_else.JPEG,3\n").unwrap();
    for cmd in ["attack", "eval"] {
        let mut c = bin();
        c.arg(cmd);
        if cmd == "attack" {
            c.args(["--attack", "fgsm"]);
        }
        let o = c
            .arg("--images")
            .arg(&img)
            .arg("--labels")
            .arg(&wrong)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("do not match the images") && e.contains("n01440764_tench.JPEG"),
            "{cmd}: {e}"
        );
    }
}
