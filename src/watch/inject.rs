//! `--inject fgsm:eps=4:from=S:to=S[:target=N]`: simulates a digital attacker on the feed.
//!
//! Frames whose stream time falls in [from, to) seconds are replaced, before the guard sees
//! them, by 8-bit FGSM adversarials (rounded, clipped 0–255, ε ≤ 8 pixel units) computed on a
//! plain-gradient guard: untargeted against the clean frame's top-1, or targeted at class N.
//! It is a demo and test tool: the attacker here knows the model, as a real one might.

use crate::engine::Guard;
use ndarray::Array3;
use std::str::FromStr;

/// Largest ε accepted, pixel units: beyond it the perturbation is visible, not adversarial.
pub const MAX_EPS: f32 = 8.0;

/// A parsed `--inject` value.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectSpec {
    /// FGSM step, pixel units (0–255 scale).
    pub eps: f32,
    /// Stretch start, stream ms (inclusive).
    pub from_ms: u64,
    /// Stretch end, stream ms (exclusive).
    pub to_ms: u64,
    /// Targeted class, or untargeted (against the clean top-1).
    pub target: Option<usize>,
}

impl FromStr for InjectSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or("");
        if kind != "fgsm" {
            return Err(format!(
                "--inject {s:?}: unknown attack {kind:?} (only fgsm: fgsm:eps=4:from=5:to=9)"
            ));
        }
        let (mut eps, mut from, mut to, mut target) = (None, None, None, None);
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--inject {s:?}: expected key=value, got {p:?}"))?;
            let num = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("--inject {s:?}: `{k}` must be a number ≥ 0, got {v:?}"))
            };
            match k {
                "eps" => eps = Some(num(v)? as f32),
                "from" => from = Some(num(v)?),
                "to" => to = Some(num(v)?),
                "target" => {
                    target = Some(v.parse::<usize>().map_err(|_| {
                        format!("--inject {s:?}: `target` must be a class index, got {v:?}")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "--inject {s:?}: unknown key `{k}` (eps, from, to, target)"
                    ));
                }
            }
        }
        let eps = eps.unwrap_or(4.0);
        if eps <= 0.0 || eps > MAX_EPS {
            return Err(format!(
                "--inject {s:?}: eps must be in (0, {MAX_EPS}] pixel units, got {eps}"
            ));
        }
        let from = from.ok_or_else(|| format!("--inject {s:?}: missing `from` (seconds)"))?;
        let to = to.ok_or_else(|| format!("--inject {s:?}: missing `to` (seconds)"))?;
        if to <= from {
            return Err(format!("--inject {s:?}: `to` must be after `from`"));
        }
        Ok(InjectSpec {
            eps,
            from_ms: (from * 1000.0).round() as u64,
            to_ms: (to * 1000.0).round() as u64,
            target,
        })
    }
}

impl InjectSpec {
    /// Whether a frame at this stream time is attacked.
    pub fn covers(&self, pts_ms: u64) -> bool {
        (self.from_ms..self.to_ms).contains(&pts_ms)
    }

    /// The adversarial version of a size×size RGB8 frame. `plain` must be compiled in plain
    /// mode with `Seed::Input`.
    pub fn apply(&self, plain: &mut Guard, rgb: &[u8], w: u32, h: u32) -> anyhow::Result<Vec<u8>> {
        let px = Array3::from_shape_fn((h as usize, w as usize, 3), |(y, x, c)| {
            rgb[(y * w as usize + x) * 3 + c] as f32
        });
        let classes = plain.labels().len().max(1);
        let zero = vec![0f32; classes];
        let clean = plain.run_pixels_seeded(px.view(), &zero)?;
        let label = crate::engine::top_k(&clean.logits, 1)
            .first()
            .copied()
            .unwrap_or(0);
        let adv = crate::attack::fgsm::fgsm(plain, px.view(), label, self.eps, self.target)
            .map_err(|e| anyhow::anyhow!("--inject: {e}"))?;
        Ok(adv
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s: InjectSpec = "fgsm:eps=4:from=5:to=9.5".parse().unwrap();
        assert_eq!(
            s,
            InjectSpec {
                eps: 4.0,
                from_ms: 5000,
                to_ms: 9500,
                target: None
            }
        );
        assert!(s.covers(5000) && s.covers(9499) && !s.covers(9500));
        let t: InjectSpec = "fgsm:from=1:to=2:target=859".parse().unwrap();
        assert_eq!(t.target, Some(859));
        for bad in [
            "pgd:eps=4:from=1:to=2",
            "fgsm:eps=16:from=1:to=2",
            "fgsm:eps=4:from=3:to=2",
            "fgsm:eps=4:to=2",
            "fgsm:eps=4:from=1:to=2:size=3",
        ] {
            assert!(bad.parse::<InjectSpec>().is_err(), "{bad}");
        }
    }
}
