//! Object detections from a CenterNet-style detector: peaks of the per-class centre heat map
//! (max-pool NMS), the top k over all classes and cells, a score threshold, and boxes from the
//! per-cell edge distances, mapped back to the frame.
//!
//! The decode is not in the ONNX graph, so it runs here on the heat-map and box outputs that a
//! guard frame returns beside its response ([`GuardOutput::outputs`]).

use super::manifest::{DetectorSpec, Manifest, ManifestError, ModelKind};
use super::{Guard, GuardOutput};
use ndarray::{ArrayView3, ArrayViewD, Axis, Ix3};
use std::fmt;
use std::path::Path;

/// One detected object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Heat-map channel (COCO class index).
    pub class: usize,
    /// Class name from the labels file (`class N` when it has none).
    pub label: String,
    /// Heat-map value at the peak, in [0, 1].
    pub score: f32,
    /// Box as x0, y0, x1, y1 in frame pixels, clipped to the frame.
    pub bbox: [f32; 4],
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [x0, y0, x1, y1] = self.bbox;
        write!(
            f,
            "{} {:.3} [{x0:.1}, {y0:.1}, {x1:.1}, {y1:.1}]",
            self.label, self.score
        )
    }
}

/// A heat-map peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Channel.
    pub class: usize,
    /// Row of the cell.
    pub row: usize,
    /// Column of the cell.
    pub col: usize,
    /// Heat-map value.
    pub score: f32,
}

/// Decode parameters (the manifest's `[detector]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decode {
    /// Side of the NMS window (odd).
    pub nms: usize,
    /// Peaks kept at most, over all classes and cells.
    pub top_k: usize,
    /// Lowest score kept.
    pub threshold: f32,
}

impl Default for Decode {
    fn default() -> Self {
        Decode {
            nms: 3,
            top_k: 100,
            threshold: 0.3,
        }
    }
}

impl From<&DetectorSpec> for Decode {
    fn from(d: &DetectorSpec) -> Self {
        Decode {
            nms: d.nms,
            top_k: d.top_k,
            threshold: d.threshold,
        }
    }
}

/// Errors while decoding detections.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The guard's manifest is not a detector.
    #[error("model {0} is a classifier; detections need a manifest with kind = \"detector\"")]
    NotADetector(String),
    /// The frame result lacks a detector output.
    #[error("the frame result has no output {0:?} (the detector's heat map or boxes)")]
    MissingOutput(String),
    /// An output has a shape the decode cannot use.
    #[error("output {name:?} has shape {shape:?}; expected {want}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        want: String,
    },
}

/// Peaks of a C×H×W heat map scoring at least `threshold`: cells equal to the maximum of
/// their `nms`×`nms` window (the window is cut at the border, like a max-pool padded with
/// −∞). Equal neighbours are all peaks, as with CenterNet's `maxpool(h) == h`. Class-major order.
pub fn peaks(heat: ArrayView3<f32>, nms: usize, threshold: f32) -> Vec<Peak> {
    let (c, h, w) = heat.dim();
    let r = (nms.max(1) / 2) as isize;
    let mut out = Vec::new();
    for k in 0..c {
        let plane = heat.index_axis(Axis(0), k);
        for y in 0..h {
            for x in 0..w {
                let v = plane[[y, x]];
                // NaN is never a peak: it compares as neither above nor below the threshold.
                if v.is_nan() || v < threshold {
                    continue;
                }
                let mut peak = true;
                'win: for dy in -r..=r {
                    let yy = y as isize + dy;
                    if yy < 0 || yy >= h as isize {
                        continue;
                    }
                    for dx in -r..=r {
                        let xx = x as isize + dx;
                        if xx < 0 || xx >= w as isize {
                            continue;
                        }
                        if plane[[yy as usize, xx as usize]] > v {
                            peak = false;
                            break 'win;
                        }
                    }
                }
                if peak {
                    out.push(Peak {
                        class: k,
                        row: y,
                        col: x,
                        score: v,
                    });
                }
            }
        }
    }
    out
}

/// The decoded peaks: the top `top_k` by score over all classes and cells, then those at or
/// above `threshold` (the same set as thresholding first). Equal scores keep class-major order.
pub fn top_peaks(heat: ArrayView3<f32>, d: &Decode) -> Vec<Peak> {
    let mut p = peaks(heat, d.nms, d.threshold);
    // Stable: ties stay in (class, row, col) order, so the cut at top_k is deterministic.
    p.sort_by(|a, b| b.score.total_cmp(&a.score));
    p.truncate(d.top_k);
    p
}

/// Decodes detections from a C×H×W heat map and a 4×H×W box map (left, top, right, bottom
/// distances in model-input pixels). `input` is the model input's width × height, `frame` the
/// frame's: boxes are scaled from one to the other (the frame was squashed to the input).
pub fn decode(
    heat: ArrayView3<f32>,
    boxes: ArrayView3<f32>,
    d: &Decode,
    input: (u32, u32),
    frame: (u32, u32),
    labels: &[String],
) -> Result<Vec<Detection>, DetectError> {
    let (_, h, w) = heat.dim();
    let (bc, bh, bw) = boxes.dim();
    if bc != 4 || (bh, bw) != (h, w) {
        return Err(DetectError::Shape {
            name: "boxes".into(),
            shape: vec![bc, bh, bw],
            want: format!("4×{h}×{w} (4 edge distances per heat-map cell)"),
        });
    }
    if h == 0 || w == 0 {
        return Ok(vec![]);
    }
    let (sx, sy) = (input.0 as f32 / w as f32, input.1 as f32 / h as f32);
    let (fx, fy) = (
        frame.0 as f32 / input.0 as f32,
        frame.1 as f32 / input.1 as f32,
    );
    let (fw, fh) = (frame.0 as f32, frame.1 as f32);
    Ok(top_peaks(heat, d)
        .into_iter()
        .map(|p| {
            let (cx, cy) = (sx * p.col as f32, sy * p.row as f32);
            let e = |k: usize| boxes[[k, p.row, p.col]];
            let bbox = [
                ((cx - e(0)) * fx).clamp(0.0, fw),
                ((cy - e(1)) * fy).clamp(0.0, fh),
                ((cx + e(2)) * fx).clamp(0.0, fw),
                ((cy + e(3)) * fy).clamp(0.0, fh),
            ];
            Detection {
                class: p.class,
                label: labels
                    .get(p.class)
                    .cloned()
                    .unwrap_or_else(|| format!("class {}", p.class)),
                score: p.score,
                bbox,
            }
        })
        .collect())
}

/// A 1×C×H×W (or C×H×W) output as C×H×W.
pub(crate) fn plane3<'a>(
    name: &str,
    a: ArrayViewD<'a, f32>,
) -> Result<ArrayView3<'a, f32>, DetectError> {
    let shape = a.shape().to_vec();
    let bad = || DetectError::Shape {
        name: name.into(),
        shape: shape.clone(),
        want: "1×C×H×W".into(),
    };
    let a = match a.ndim() {
        4 if shape[0] == 1 => a.index_axis_move(Axis(0), 0),
        3 => a,
        _ => return Err(bad()),
    };
    a.into_dimensionality::<Ix3>().map_err(|_| bad())
}

/// The heat map (C×H×W) of one frame result of a detector guard.
pub fn heat_map<'a>(
    guard: &Guard,
    out: &'a GuardOutput,
) -> Result<ArrayView3<'a, f32>, DetectError> {
    let m = guard.manifest();
    let spec = m
        .detector
        .as_ref()
        .ok_or_else(|| DetectError::NotADetector(m.name.clone()))?;
    let a = out
        .output(&spec.heatmap)
        .ok_or_else(|| DetectError::MissingOutput(spec.heatmap.clone()))?;
    plane3(&spec.heatmap, a)
}

/// The detections of one frame result of a detector guard, boxes in pixels of a
/// `frame_w` × `frame_h` frame (the one that was squashed to the model input).
pub fn detections(
    guard: &Guard,
    out: &GuardOutput,
    frame_w: u32,
    frame_h: u32,
) -> Result<Vec<Detection>, DetectError> {
    let m = guard.manifest();
    let spec = m
        .detector
        .as_ref()
        .ok_or_else(|| DetectError::NotADetector(m.name.clone()))?;
    let get = |name: &str| {
        out.output(name)
            .ok_or_else(|| DetectError::MissingOutput(name.into()))
    };
    let heat = plane3(&spec.heatmap, get(&spec.heatmap)?)?;
    let boxes = plane3(&spec.boxes, get(&spec.boxes)?)?;
    let s = guard.size();
    decode(
        heat,
        boxes,
        &Decode::from(spec),
        (s, s),
        (frame_w, frame_h),
        guard.labels(),
    )
}

/// IoU of two x0, y0, x1, y1 boxes (detections, tracks).
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Whether the guard's model is a detector.
pub fn is_detector(guard: &Guard) -> bool {
    guard.manifest().kind == ModelKind::Detector
}

/// Detections rescaled from a `from` frame to a `to` frame (w, h), e.g. to draw them on the
/// model-input image instead of the original photo.
pub fn rescale(dets: &[Detection], from: (u32, u32), to: (u32, u32)) -> Vec<Detection> {
    let (sx, sy) = (
        to.0 as f32 / from.0.max(1) as f32,
        to.1 as f32 / from.1.max(1) as f32,
    );
    dets.iter()
        .map(|d| Detection {
            bbox: [
                d.bbox[0] * sx,
                d.bbox[1] * sy,
                d.bbox[2] * sx,
                d.bbox[3] * sy,
            ],
            ..d.clone()
        })
        .collect()
}

/// Checks a detector manifest against its model, so that a wrong output name or shape is one
/// error naming the key: the heat map and boxes must be graph outputs, the boxes 4 channels on
/// the heat map's grid, the labels (when found) one per channel, the seed class a channel.
/// Returns the number of classes (1000 for a classifier, whose labels are padded to it).
pub fn check_model(
    model: &crate::onnx::ModelProto,
    m: &Manifest,
    path: &Path,
) -> Result<usize, ManifestError> {
    let Some(spec) = &m.detector else {
        return Ok(1000);
    };
    let bad = |msg: String| ManifestError::Parse {
        path: m.name.clone(),
        msg,
    };
    let outputs: Vec<_> = model
        .graph
        .as_ref()
        .map(|g| g.output.iter().collect())
        .unwrap_or_default();
    let names = || {
        outputs
            .iter()
            .map(|o| format!("{:?}", o.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |key: &str, name: &str| {
        outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| crate::onnx::declared_dims(o).unwrap_or_default())
            .ok_or_else(|| {
                bad(format!(
                    "detector.{key} = {name:?} is not an output of {} (outputs: {})",
                    path.display(),
                    names()
                ))
            })
    };
    let hd = find("heatmap", &spec.heatmap)?;
    let bd = find("boxes", &spec.boxes)?;
    let shown = |d: &[Option<usize>]| {
        d.iter()
            .map(|v| v.map_or(-1, |v| v as i64))
            .collect::<Vec<_>>()
    };
    if !hd.is_empty() && hd.len() != 4 {
        return Err(bad(format!(
            "detector.heatmap {:?} has shape {:?}; 1×classes×H×W expected",
            spec.heatmap,
            shown(&hd)
        )));
    }
    if bd.len() == 4 {
        let grid_differs =
            hd.len() == 4 && (2..4).any(|k| matches!((hd[k], bd[k]), (Some(a), Some(b)) if a != b));
        if bd[1].is_some_and(|c| c != 4) || grid_differs {
            return Err(bad(format!(
                "detector.boxes {:?} has shape {:?}; 1×4×H×W on the heat map's {:?} grid expected",
                spec.boxes,
                shown(&bd),
                shown(&hd)
            )));
        }
    }
    let channels = hd.get(1).copied().flatten();
    let labelled = m.label_count();
    if let Some(c) = channels
        && labelled > 0
        && labelled != c
    {
        return Err(bad(format!(
            "the labels file {:?} has {labelled} classes, the heat map {:?} has {c} channels",
            m.labels.as_deref().unwrap_or_default(),
            spec.heatmap
        )));
    }
    let classes = channels.unwrap_or(labelled);
    if let Some(seeds) = &spec.seed_class {
        if seeds.is_empty() {
            return Err(bad("detector.seed_class = [] names no class".into()));
        }
        if let Some(s) = seeds.iter().find(|&&s| classes > 0 && s >= classes) {
            return Err(bad(format!(
                "detector.seed_class = {s}, but the heat map has {classes} channels"
            )));
        }
    }
    Ok(classes)
}
