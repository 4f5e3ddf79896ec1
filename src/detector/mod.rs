//! Detector: per-frame scores → thresholded decisions → per-camera events.

pub mod event;
