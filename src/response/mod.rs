//! Feature response → gray map → local spatial entropy and region statistics.

pub mod entropy;
pub mod gray;
pub mod region;
pub mod squeeze;
pub mod texture;

use ndarray::{Array2, ArrayView3};
use serde::{Deserialize, Serialize};

pub use gray::GrayMode;

/// How a response is turned into statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Gray-map conversion.
    pub gray: GrayMode,
    /// Histogram bins for the local entropy (≤ 256).
    pub bins: usize,
    /// Side of the square window for the concentration statistic, in map pixels.
    pub window: usize,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            gray: GrayMode::default(),
            bins: 16,
            window: 56,
        }
    }
}

/// Statistics of one frame's response.
#[derive(Debug, Clone)]
pub struct FrameStats {
    /// The paper's S̄: mean local entropy over 3×3 patches, bits.
    pub entropy: f64,
    /// Share of Σ|response| inside the best `window`² box (0–1): high when a patch draws the network.
    pub concentration: f64,
    /// That box: x, y, w, h in map pixels.
    pub bbox: [u32; 4],
    /// The gray map (H×W, 0–1) the entropy was computed on.
    pub gray: Array2<f32>,
    /// The frame's texture inside `bbox`, gray levels ([`texture::box_texture`]); `None` until
    /// [`FrameStats::measure_texture`] sees the frame (and in scores replayed without it).
    pub box_texture: Option<f64>,
}

impl FrameStats {
    /// Statistics without a map (replayed from stored scores): the box and gray map are empty.
    pub fn scalar(entropy: f64, concentration: f64) -> FrameStats {
        FrameStats {
            entropy,
            concentration,
            bbox: [0; 4],
            gray: Array2::zeros((0, 0)),
            box_texture: None,
        }
    }

    /// Measures the texture of the frame (w×h RGB8, the one the response was computed on)
    /// inside the response's box.
    pub fn measure_texture(&mut self, rgb: &[u8], w: u32, h: u32) {
        let (mh, mw) = self.gray.dim();
        self.box_texture = texture::box_texture(rgb, w, h, self.bbox, (mw as u32, mh as u32));
    }
}

/// Computes all statistics of a C×H×W response.
pub fn analyze(response: ArrayView3<f32>, cfg: &ResponseConfig) -> FrameStats {
    analyze_with_magnitude(response, cfg).0
}

/// [`analyze`], also handing back the |response| magnitude map it computed, so that callers
/// that draw it (the overlay, event heat maps) do not compute it a second time.
pub fn analyze_with_magnitude(
    response: ArrayView3<f32>,
    cfg: &ResponseConfig,
) -> (FrameStats, Array2<f32>) {
    let gray = gray::gray_map(response, cfg.gray);
    let entropy = entropy::mean_local_entropy(gray.view(), cfg.bins);
    let mag = gray::magnitude(response);
    let (concentration, bbox) = region::best_window_share(mag.view(), cfg.window);
    let stats = FrameStats {
        entropy,
        concentration,
        bbox,
        gray,
        box_texture: None,
    };
    (stats, mag)
}
