//! What to open: the camera spec and the source kind derived from its URI.

use super::error::SourceError;
use super::uri::redact;
use std::path::PathBuf;
use std::time::Duration;

/// How to open one camera.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// Camera name (appears in every frame, log line and error).
    pub name: String,
    /// rtsp://…, file path, /dev/videoN, http(s)://…mjpeg, test: / test:PATTERN,
    /// csi:N (Jetson CSI), jetson:<rtsp-uri|file> (Jetson hardware decode).
    pub uri: String,
    /// Model input side (224): frames are squashed to size×size, whole scene visible.
    pub size: u32,
    /// Frame sampling: keep every k-th decoded frame (1 = all).
    pub every_nth: u32,
    /// Upper bound on delivered frames per second of stream time (None = no bound).
    pub max_fps: Option<f64>,
    /// Live sources: restart the pipeline when no frame arrived for this long.
    pub watchdog: Duration,
    /// First reconnect delay; doubles per failed attempt (with jitter).
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Files: false = back-pressure (no drops); true = pace to the clock and drop like a live source.
    pub realtime: bool,
    /// Files: play the clip's own frames re-timed to another rate (`advguard bench` plays a
    /// 12.5-fps clip as a 30-fps camera); `None` = the stream's own rate.
    pub retime: Option<Retime>,
}

/// A file's frames played faster or slower, none dropped or repeated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retime {
    /// Speed factor: the target rate over the clip's rate.
    pub speed: f64,
    /// The target rate, frames/s.
    pub fps: u32,
}

impl SourceSpec {
    /// A spec with the defaults: 224 px, every frame, no fps bound, 5 s watchdog,
    /// 0.5 s → 30 s reconnect backoff, back-pressure for files.
    pub fn new(name: impl Into<String>, uri: impl Into<String>) -> Self {
        SourceSpec {
            name: name.into(),
            uri: uri.into(),
            size: 224,
            every_nth: 1,
            max_fps: None,
            watchdog: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            realtime: false,
            retime: None,
        }
    }

    /// The kind of source the URI names.
    pub fn kind(&self) -> Result<SourceKind, SourceError> {
        SourceKind::parse(&self.uri).ok_or_else(|| SourceError::UnsupportedUri {
            camera: self.name.clone(),
            uri: redact(&self.uri),
        })
    }

    /// Checks ranges and, for files, that the file can be opened.
    pub(crate) fn validate(&self) -> Result<SourceKind, SourceError> {
        let bad = |what: String| SourceError::InvalidSpec {
            camera: self.name.clone(),
            what,
        };
        if self.name.trim().is_empty() {
            return Err(bad("camera name is empty".into()));
        }
        if !(8..=4096).contains(&self.size) {
            return Err(bad(format!("size {} is outside 8..=4096", self.size)));
        }
        if self.every_nth == 0 {
            return Err(bad("every_nth must be at least 1".into()));
        }
        if let Some(f) = self.max_fps
            && !(f.is_finite() && f > 0.0)
        {
            return Err(bad(format!("max_fps {f} must be a positive number")));
        }
        if self.watchdog.is_zero() {
            return Err(bad("watchdog must be longer than 0 s".into()));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(bad(format!(
                "reconnect delays must satisfy 0 < initial ({:?}) <= max ({:?})",
                self.reconnect_initial, self.reconnect_max
            )));
        }
        let kind = self.kind()?;
        if let SourceKind::File(p) | SourceKind::JetsonFile(p) = &kind {
            let file_err = |message: String| SourceError::File {
                camera: self.name.clone(),
                path: p.clone(),
                message,
            };
            let meta = std::fs::metadata(p).map_err(|e| file_err(e.to_string()))?;
            if !meta.is_file() {
                return Err(file_err("not a regular file".into()));
            }
            std::fs::File::open(p).map_err(|e| file_err(e.to_string()))?;
        }
        Ok(kind)
    }
}

/// Kind of source, chosen from the URI; selects the pipeline template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// rtsp:// (rtsps://, rtspt://) camera: pipelines/rtsp.txt.
    Rtsp(String),
    /// Video file: pipelines/file.txt.
    File(PathBuf),
    /// V4L2 device /dev/videoN: pipelines/v4l2.txt.
    V4l2(String),
    /// MJPEG over http(s)://: pipelines/http-mjpeg.txt.
    HttpMjpeg(String),
    /// Synthetic live pattern (videotestsrc pattern nick): pipelines/test.txt.
    Test(String),
    /// Jetson CSI sensor id (`csi:N`): pipelines/jetson-csi.txt (untested here).
    JetsonCsi(u32),
    /// Jetson hardware-decoded RTSP (`jetson:rtsp://…`): pipelines/jetson-rtsp.txt (untested here).
    JetsonRtsp(String),
    /// Jetson hardware-decoded file (`jetson:/path.mp4`): pipelines/jetson-file.txt (untested here).
    JetsonFile(PathBuf),
}

impl SourceKind {
    /// Parses a source URI; None when it names nothing we know.
    pub fn parse(uri: &str) -> Option<SourceKind> {
        let uri = uri.trim();
        if uri.is_empty() {
            return None;
        }
        if let Some(rest) = uri.strip_prefix("jetson:") {
            return match SourceKind::parse(rest)? {
                SourceKind::Rtsp(u) => Some(SourceKind::JetsonRtsp(u)),
                SourceKind::File(p) => Some(SourceKind::JetsonFile(p)),
                _ => None,
            };
        }
        if let Some(rest) = uri.strip_prefix("csi:") {
            return rest
                .trim_start_matches("//")
                .parse()
                .ok()
                .map(SourceKind::JetsonCsi);
        }
        if let Some(rest) = uri.strip_prefix("test:") {
            let pattern = if rest.is_empty() { "smpte" } else { rest };
            let ok = pattern
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
            return ok.then(|| SourceKind::Test(pattern.to_string()));
        }
        let lower = uri.to_ascii_lowercase();
        if ["rtsp://", "rtsps://", "rtspt://"]
            .iter()
            .any(|s| lower.starts_with(s))
        {
            return Some(SourceKind::Rtsp(uri.to_string()));
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Some(SourceKind::HttpMjpeg(uri.to_string()));
        }
        if uri.starts_with("/dev/video") {
            return Some(SourceKind::V4l2(uri.to_string()));
        }
        if let Some(p) = uri.strip_prefix("file://") {
            return Some(SourceKind::File(PathBuf::from(p)));
        }
        if uri.contains("://") {
            return None;
        }
        Some(SourceKind::File(PathBuf::from(uri)))
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Rtsp(_) => "rtsp",
            SourceKind::File(_) => "file",
            SourceKind::V4l2(_) => "v4l2",
            SourceKind::HttpMjpeg(_) => "http-mjpeg",
            SourceKind::Test(_) => "test",
            SourceKind::JetsonCsi(_) => "jetson-csi",
            SourceKind::JetsonRtsp(_) => "jetson-rtsp",
            SourceKind::JetsonFile(_) => "jetson-file",
        }
    }

    /// Live sources drop frames instead of waiting, and reconnect instead of ending.
    pub fn is_live(&self) -> bool {
        !matches!(self, SourceKind::File(_) | SourceKind::JetsonFile(_))
    }

    /// How the input appears in logs and errors: the redacted URI or the file path.
    pub fn shown(&self, uri: &str) -> String {
        match self {
            SourceKind::File(p) | SourceKind::JetsonFile(p) => format!("file '{}'", p.display()),
            _ => redact(uri),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_uris() {
        let k = |u: &str| SourceKind::parse(u);
        assert_eq!(k("rtsp://h/x"), Some(SourceKind::Rtsp("rtsp://h/x".into())));
        assert_eq!(k("test:"), Some(SourceKind::Test("smpte".into())));
        assert_eq!(k("test:ball"), Some(SourceKind::Test("ball".into())));
        assert_eq!(k("test:a b"), None);
        assert_eq!(
            k("/dev/video2"),
            Some(SourceKind::V4l2("/dev/video2".into()))
        );
        assert_eq!(k("csi:1"), Some(SourceKind::JetsonCsi(1)));
        assert_eq!(
            k("jetson:a.mp4"),
            Some(SourceKind::JetsonFile("a.mp4".into()))
        );
        assert_eq!(k("ftp://h/x"), None);
        assert_eq!(k(""), None);
        assert!(!k("clip.mp4").unwrap().is_live());
        assert!(k("HTTP://cam/v.mjpg").unwrap().is_live());
    }

    #[test]
    fn bad_specs_are_one_clear_error() {
        let mut s = SourceSpec::new("cam1", "test:");
        s.every_nth = 0;
        assert!(s.validate().unwrap_err().to_string().contains("every_nth"));
        let s = SourceSpec::new("cam2", "/nonexistent/clip.mp4");
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("cam2") && e.contains("/nonexistent/clip.mp4"),
            "{e}"
        );
        let s = SourceSpec::new("cam3", "ftp://u:secret@h/x");
        let e = s.validate().unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
