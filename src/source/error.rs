//! Configuration errors found when a source is spawned.

use std::path::PathBuf;

/// Why a camera could not be started (one line, names the camera and the problem).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A field of the spec is out of range.
    #[error("camera '{camera}': {what}")]
    InvalidSpec {
        /// Camera name.
        camera: String,
        /// What is wrong.
        what: String,
    },
    /// The URI names no source kind we know.
    #[error(
        "camera '{camera}': unsupported source '{uri}' (expected rtsp://…, http(s)://… MJPEG, \
         /dev/videoN, test:[PATTERN], csi:N, jetson:<rtsp-uri|file> or a file path)"
    )]
    UnsupportedUri {
        /// Camera name.
        camera: String,
        /// The URI, credentials redacted.
        uri: String,
    },
    /// The video file does not exist or cannot be read.
    #[error("camera '{camera}': video file '{}': {message}", path.display())]
    File {
        /// Camera name.
        camera: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// GStreamer could not be initialised.
    #[error("camera '{camera}': GStreamer is not available: {message}")]
    Init {
        /// Camera name.
        camera: String,
        /// GStreamer's message.
        message: String,
    },
    /// The pipeline could not be built (usually a missing GStreamer plugin).
    #[error("camera '{camera}': cannot build the {kind} pipeline: {message}")]
    Pipeline {
        /// Camera name.
        camera: String,
        /// Source kind.
        kind: &'static str,
        /// GStreamer's message.
        message: String,
    },
    /// The supervisor thread could not be started.
    #[error("camera '{camera}': cannot start its thread: {message}")]
    Thread {
        /// Camera name.
        camera: String,
        /// The OS error.
        message: String,
    },
}
