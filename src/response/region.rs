//! Region statistics that localise a patch: where the response mass concentrates.
//!
//! An adversarial patch pulls the network's attention into one place, so the share of
//! Σ|response| inside the best fixed-size window rises (FINDINGS.md: AUC 0.999 on SqueezeNet),
//! while the paper's mean entropy falls. Window sums come from a summed-area table.

use ndarray::{Array2, ArrayView2};

/// Summed-area table with a zero first row and column, in f64 to keep large sums exact enough.
fn integral(m: ArrayView2<f32>) -> Array2<f64> {
    let (h, w) = m.dim();
    let mut s = Array2::<f64>::zeros((h + 1, w + 1));
    for y in 0..h {
        let mut row = 0.0;
        for x in 0..w {
            row += m[[y, x]] as f64;
            s[[y + 1, x + 1]] = s[[y, x + 1]] + row;
        }
    }
    s
}

/// Best `win`×`win` window by mass: (share of the total in it, [x, y, w, h]).
/// A window larger than the map is clamped to it; an all-zero map gives share 0.
pub fn best_window_share(m: ArrayView2<f32>, win: usize) -> (f64, [u32; 4]) {
    let (h, w) = m.dim();
    if h == 0 || w == 0 {
        return (0.0, [0, 0, 0, 0]);
    }
    best_share_in(&integral(m), win)
}

/// Multi-scale scan: over the window sides in `wins`, the largest excess of a window's mass
/// share over its area share (what a uniform map would give), with that window's box.
///
/// One fixed window under-covers a patch larger than itself and dilutes a smaller one; the
/// excess over the area share puts windows of different sizes on one scale without any
/// per-scale constant fitted to data (a scan statistic in the spirit of Kulldorff's).
pub fn multiscale_excess(m: ArrayView2<f32>, wins: &[usize]) -> (f64, [u32; 4]) {
    let (h, w) = m.dim();
    if h == 0 || w == 0 || wins.is_empty() {
        return (0.0, [0, 0, 0, 0]);
    }
    let s = integral(m);
    let mut best = (f64::NEG_INFINITY, [0u32; 4]);
    for &win in wins {
        let (share, b) = best_share_in(&s, win);
        let excess = share - (b[2] as f64 * b[3] as f64) / (h * w) as f64;
        if excess > best.0 {
            best = (excess, b);
        }
    }
    best
}

/// `best_window_share` on a precomputed summed-area table.
fn best_share_in(s: &Array2<f64>, win: usize) -> (f64, [u32; 4]) {
    let (h, w) = (s.nrows() - 1, s.ncols() - 1);
    let (wh, ww) = (win.clamp(1, h), win.clamp(1, w));
    let total = s[[h, w]];
    let mut best = (f64::NEG_INFINITY, 0, 0);
    for y in 0..=h - wh {
        for x in 0..=w - ww {
            let v = s[[y + wh, x + ww]] - s[[y, x + ww]] - s[[y + wh, x]] + s[[y, x]];
            if v > best.0 {
                best = (v, x, y);
            }
        }
    }
    let share = if total > 0.0 {
        (best.0 / total).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (share, [best.1 as u32, best.2 as u32, ww as u32, wh as u32])
}

/// Max over non-overlapping `block`×`block` blocks of the block mean (e.g. of a local-entropy
/// map), with that block's box; partial blocks at the edges count too.
pub fn block_max_mean(m: ArrayView2<f32>, block: usize) -> (f64, [u32; 4]) {
    let (h, w) = m.dim();
    let b = block.max(1);
    let mut best = (f64::NEG_INFINITY, [0u32; 4]);
    for y in (0..h).step_by(b) {
        for x in (0..w).step_by(b) {
            let (bh, bw) = (b.min(h - y), b.min(w - x));
            let v = m.slice(ndarray::s![y..y + bh, x..x + bw]);
            let mean = v.iter().map(|&a| a as f64).sum::<f64>() / (bh * bw) as f64;
            if mean > best.0 {
                best = (mean, [x as u32, y as u32, bw as u32, bh as u32]);
            }
        }
    }
    if best.0.is_finite() {
        best
    } else {
        (0.0, [0; 4])
    }
}

/// Intersection over union of two [x, y, w, h] boxes.
pub fn iou(a: [u32; 4], b: [u32; 4]) -> f64 {
    let (ax1, ay1, ax2, ay2) = (a[0], a[1], a[0] + a[2], a[1] + a[3]);
    let (bx1, by1, bx2, by2) = (b[0], b[1], b[0] + b[2], b[1] + b[3]);
    let iw = ax2.min(bx2).saturating_sub(ax1.max(bx1)) as f64;
    let ih = ay2.min(by2).saturating_sub(ay1.max(by1)) as f64;
    let inter = iw * ih;
    let union = (a[2] * a[3] + b[2] * b[3]) as f64 - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hot_block() {
        let mut m = Array2::<f32>::from_elem((64, 64), 0.01);
        for y in 20..30 {
            for x in 40..50 {
                m[[y, x]] = 1.0;
            }
        }
        let (share, b) = best_window_share(m.view(), 10);
        assert_eq!(b, [40, 20, 10, 10]);
        let total = 100.0 + 0.01 * (64.0 * 64.0 - 100.0);
        assert!((share - 100.0 / total).abs() < 1e-6);
        assert!((iou(b, [40, 20, 10, 10]) - 1.0).abs() < 1e-12);
        assert!((iou(b, [45, 20, 10, 10]) - 50.0 / 150.0).abs() < 1e-12);
        let (mx, bb) = block_max_mean(m.view(), 32);
        assert_eq!(bb, [32, 0, 32, 32]);
        assert!(mx > 0.05);
    }

    #[test]
    fn multiscale_picks_the_window_that_fits() {
        // A 40×40 hot square on a faint floor: the 40 window has the largest excess, and a
        // uniform map has none at any scale.
        let mut m = Array2::<f32>::from_elem((128, 128), 0.01);
        for y in 30..70 {
            for x in 60..100 {
                m[[y, x]] = 1.0;
            }
        }
        let (ex, b) = multiscale_excess(m.view(), &[16, 40, 64]);
        assert_eq!(b, [60, 30, 40, 40]);
        let total = 1600.0 + 0.01 * (128.0 * 128.0 - 1600.0);
        assert!((ex - (1600.0 / total - 1600.0 / (128.0 * 128.0))).abs() < 1e-6);
        let (u, _) = multiscale_excess(Array2::<f32>::ones((32, 32)).view(), &[8, 16]);
        assert!(u.abs() < 1e-12);
    }
}
