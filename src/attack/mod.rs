//! Adversarial attacks in pixel space (H×W×3, 0–255), with the model's preprocessing inside.
//!
//! Gradients come from a guard graph compiled in plain mode with `Seed::Input`: one engine
//! call returns the logits and d(seed·logits)/d(input), mapped to pixels with
//! `Preprocess::grad_to_pixels`. Decision-based attacks (boundary, one-pixel) only see
//! [`Forward`], so they cannot ask for a gradient; [`Oracle`] counts calls by kind to prove it.
//! Every attack returns 8-bit values (rounded, clipped) and is deterministic for its seed.

pub mod adaptive;
pub mod boundary;
pub mod deepfool;
pub mod eot;
pub mod fgsm;
pub mod gradient;
pub mod hide;
pub mod onepixel;
pub mod patch;
pub mod pgd;

use crate::engine::compile::{CompileOptions, Mode, Seed};
use crate::engine::manifest::Manifest;
use crate::engine::{BackendKind, Guard, GuardError, GuardOptions, softmax};
use ndarray::{Array3, ArrayView3};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors of the attacks.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// The engine failed.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// No attack of that name.
    #[error("unknown attack {0:?} (known: {known})", known = NAMES.join(", "))]
    Unknown(String),
    /// A parameter or input is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Engine calls made so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    /// Forward-only calls (logits).
    pub forward: u64,
    /// Calls that also return an input gradient.
    pub gradient: u64,
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, o: Calls) -> Calls {
        Calls {
            forward: self.forward - o.forward,
            gradient: self.gradient - o.gradient,
        }
    }
}

/// A classifier that answers with logits only (what decision-based attacks may use).
pub trait Forward {
    /// Pre-Softmax class scores of H×W×3 pixels (0–255).
    fn logits(&mut self, px: ArrayView3<f32>) -> Result<Vec<f32>, AttackError>;
    /// Calls made so far, by kind.
    fn calls(&self) -> Calls;
}

/// A classifier that also gives input gradients (white-box attacks).
pub trait Model: Forward {
    /// Logits and the pixel-space gradient of `seed · logits` at `px`.
    fn gradient(
        &mut self,
        px: ArrayView3<f32>,
        seed: &[f32],
    ) -> Result<(Vec<f32>, Array3<f32>), AttackError>;
}

/// A guard compiled with `Seed::Input` is a `Model` by itself: logits come from a zero seed
/// (a full forward+backward, so `Oracle`, with a forward-only graph beside it, is cheaper).
impl Forward for Guard {
    fn logits(&mut self, px: ArrayView3<f32>) -> Result<Vec<f32>, AttackError> {
        // The guard's class count is its label count; a zero seed leaves only the forward.
        let zeros = vec![0f32; self.labels().len()];
        Ok(self.run_pixels_seeded(px, &zeros)?.logits)
    }
    fn calls(&self) -> Calls {
        Calls {
            forward: 0,
            gradient: Guard::calls(self),
        }
    }
}

impl Model for Guard {
    fn gradient(
        &mut self,
        px: ArrayView3<f32>,
        seed: &[f32],
    ) -> Result<(Vec<f32>, Array3<f32>), AttackError> {
        let out = self.run_pixels_seeded(px, seed)?;
        let g = out.response.insert_axis(ndarray::Axis(0));
        Ok((out.logits, self.preprocess().grad_to_pixels(g.view())))
    }
}

/// The model as attacks see it: a plain-gradient guard graph (`Seed::Input`) for gradients and
/// the plain classifier for logits, with engine calls counted by kind.
pub struct Oracle {
    grad: Guard,
    fwd: Guard,
    calls: Calls,
}

impl Oracle {
    /// Opens both graphs of a model.
    pub fn open(
        manifest: &Manifest,
        model_path: Option<&Path>,
        backend: BackendKind,
    ) -> Result<Oracle, AttackError> {
        let mut opts = GuardOptions {
            model_path: model_path.map(Path::to_path_buf),
            backend,
            compile: Some(CompileOptions {
                mode: Mode::Plain,
                seed: Seed::Input,
                input_shape: None,
                ..Default::default()
            }),
        };
        let grad = Guard::open(manifest, &opts)?;
        opts.compile = None;
        let fwd = Guard::open(manifest, &opts)?;
        Ok(Oracle {
            grad,
            fwd,
            calls: Calls::default(),
        })
    }

    /// The gradient guard (for its preprocessing and labels).
    pub fn guard(&self) -> &Guard {
        &self.grad
    }
}

impl Forward for Oracle {
    fn logits(&mut self, px: ArrayView3<f32>) -> Result<Vec<f32>, AttackError> {
        self.calls.forward += 1;
        Ok(self.fwd.run_pixels(px)?.logits)
    }
    fn calls(&self) -> Calls {
        self.calls
    }
}

impl Model for Oracle {
    fn gradient(
        &mut self,
        px: ArrayView3<f32>,
        seed: &[f32],
    ) -> Result<(Vec<f32>, Array3<f32>), AttackError> {
        self.calls.gradient += 1;
        Model::gradient(&mut self.grad, px, seed)
    }
}

/// Pixel gradient of the cross-entropy at `px` (untargeted: of the label, to ascend; targeted:
/// of the target, to descend), with the logits at `px` the seed was built from.
pub fn ce_gradient(
    m: &mut dyn Model,
    px: ArrayView3<f32>,
    logits: &[f32],
    class: usize,
) -> Result<Array3<f32>, AttackError> {
    let mut seed = softmax(logits);
    check_class(class, seed.len())?;
    seed[class] -= 1.0;
    Ok(m.gradient(px, &seed)?.1)
}

pub(crate) fn check_class(c: usize, n: usize) -> Result<(), AttackError> {
    if c >= n {
        return Err(AttackError::Invalid(format!(
            "class {c} is out of range (the model has {n} classes)"
        )));
    }
    Ok(())
}

/// Rounds to integers and clips to 0–255: what an 8-bit frame can hold.
pub fn quantise(px: &mut Array3<f32>) {
    px.mapv_inplace(|v| v.round().clamp(0.0, 255.0));
}

/// Arg-max of a slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// Whether logits count as a successful attack: untargeted, top-1 ≠ label; targeted, top-1 = target.
pub fn is_adversarial(logits: &[f32], label: usize, target: Option<usize>) -> bool {
    let t = argmax(logits);
    match target {
        Some(c) => t == c,
        None => t != label,
    }
}

/// Outcome of one attack on one image.
#[derive(Debug, Clone)]
pub struct AttackResult {
    /// The adversarial image, 8-bit values (H×W×3, 0–255).
    pub adversarial: Array3<f32>,
    /// Top-1 is wrong (untargeted) or the target (targeted) on the 8-bit image.
    pub success: bool,
    /// The same before rounding to 8 bits (equal to `success` for attacks that work on the grid).
    pub float_success: bool,
    /// The float adversarial, simply rounded to 8 bits, still fools the model.
    pub survives_quantisation: bool,
    /// Ground-truth label.
    pub label: usize,
    /// Softmax probability of the label after the attack.
    pub gt_conf: f32,
    /// Top-1 class after the attack (the target, for targeted attacks that succeed).
    pub target_class: usize,
    /// Its probability.
    pub target_conf: f32,
    /// L2 distance to the clean image, pixel units.
    pub l2: f32,
    /// L∞ distance, pixel units.
    pub linf: f32,
    /// Attack iterations (steps, generations, ε tried), attack-specific.
    pub iterations: u32,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Engine calls the attack made, by kind.
    pub calls: Calls,
    /// Where a patch was pasted (x, y, w, h), for patch attacks.
    pub patch_box: Option<[u32; 4]>,
}

/// L2 and L∞ distance between two images.
pub fn distances(a: ArrayView3<f32>, b: ArrayView3<f32>) -> (f32, f32) {
    let mut l2 = 0f64;
    let mut linf = 0f32;
    for (x, y) in a.iter().zip(b.iter()) {
        let d = (x - y).abs();
        l2 += (d as f64) * (d as f64);
        linf = linf.max(d);
    }
    (l2.sqrt() as f32, linf)
}

/// Builds the result from the final 8-bit image (one forward call to judge it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    m: &mut dyn Forward,
    clean: ArrayView3<f32>,
    mut adv: Array3<f32>,
    label: usize,
    target: Option<usize>,
    float_success: bool,
    iterations: u32,
    start: (std::time::Instant, Calls),
) -> Result<AttackResult, AttackError> {
    quantise(&mut adv);
    let logits = m.logits(adv.view())?;
    let p = softmax(&logits);
    let success = is_adversarial(&logits, label, target);
    let top = argmax(&logits);
    let tc = if success { target.unwrap_or(top) } else { top };
    let (l2, linf) = distances(clean, adv.view());
    Ok(AttackResult {
        success,
        float_success,
        survives_quantisation: float_success && success,
        label,
        gt_conf: p[label],
        target_class: tc,
        target_conf: p[tc],
        l2,
        linf,
        iterations,
        seconds: start.0.elapsed().as_secs_f64(),
        calls: m.calls() - start.1,
        adversarial: adv,
        patch_box: None,
    })
}

/// Names accepted by [`by_name`].
pub const NAMES: &[&str] = &[
    "fgsm",
    "fgsm-fixed",
    "gradient",
    "pgd",
    "deepfool",
    "onepixel",
    "boundary",
    "patch",
];

/// A per-image attack with fixed parameters.
pub trait Attack: Send + Sync {
    /// Short name (as in [`NAMES`]).
    fn name(&self) -> &str;
    /// Attacks one image of class `label`; `seed` drives any randomness.
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError>;
}

/// Options shared by [`by_name`]: `eps` (pixel units) overrides the attack's default budget.
#[derive(Debug, Clone, Default)]
pub struct AttackOptions {
    /// ε in pixel units (FGSM fixed ε, PGD ε, max ε of the minimal-ε searches).
    pub eps: Option<f32>,
    /// Pixels changed by the one-pixel attack.
    pub pixels: Option<usize>,
    /// Query / iteration budget override.
    pub budget: Option<u32>,
}

/// The attack of this name with default budgets (see each module's docs).
pub fn by_name(name: &str, o: &AttackOptions) -> Result<Box<dyn Attack>, AttackError> {
    if let Some(e) = o.eps
        && !(0.0..=255.0).contains(&e)
    {
        return Err(AttackError::Invalid(format!(
            "--eps {e} is outside 0–255 pixel units"
        )));
    }
    Ok(match name {
        "fgsm" => Box::new(fgsm::MinimalFgsm {
            max_eps: o.eps.unwrap_or(8.0),
        }),
        "fgsm-fixed" => Box::new(fgsm::FixedFgsm {
            eps: o.eps.unwrap_or(4.0),
        }),
        "gradient" => Box::new(gradient::GradientAttack {
            max_eps: o.eps.unwrap_or(8.0),
        }),
        "pgd" => {
            let mut p = pgd::Pgd::default();
            if let Some(e) = o.eps {
                p.eps = e;
            }
            if let Some(b) = o.budget {
                p.iters = b;
            }
            Box::new(p)
        }
        "deepfool" => {
            let mut d = deepfool::DeepFool::default();
            if let Some(b) = o.budget {
                d.max_steps = b;
            }
            Box::new(d)
        }
        "onepixel" => {
            let mut d = onepixel::OnePixel::default();
            if let Some(k) = o.pixels {
                d.pixels = k;
            }
            if let Some(b) = o.budget {
                d.generations = b;
            }
            Box::new(d)
        }
        "boundary" => {
            let mut d = boundary::Boundary::default();
            if let Some(b) = o.budget {
                d.max_queries = b;
            }
            Box::new(d)
        }
        "patch" => {
            return Err(AttackError::Invalid(
                "the patch attack is universal: train it first with attack::patch::Patch::train"
                    .into(),
            ));
        }
        other => return Err(AttackError::Unknown(other.to_string())),
    })
}
