//! Offline evaluation of detectors against attacks: metrics, the paper's tables, plots.
//!
//! Scores are oriented so that higher means "adversarial"; thresholds come from clean
//! scores only, so no number here is tuned on the adversarial images it judges.

pub mod combiner;
pub mod detectors;
pub mod hide;
pub mod hide_video;
pub mod metrics;
pub mod patch;
pub mod plots;
pub mod report;
pub mod table;
pub mod video;
