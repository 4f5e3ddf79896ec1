//! Pipeline descriptions from the text templates in `pipelines/`, and building them.

use super::error::SourceError;
use super::spec::{SourceKind, SourceSpec};
use gstreamer as gst;
use gstreamer::prelude::*;

const RTSP: &str = include_str!("../../pipelines/rtsp.txt");
const FILE: &str = include_str!("../../pipelines/file.txt");
const V4L2: &str = include_str!("../../pipelines/v4l2.txt");
const HTTP_MJPEG: &str = include_str!("../../pipelines/http-mjpeg.txt");
const TEST: &str = include_str!("../../pipelines/test.txt");
const JETSON_CSI: &str = include_str!("../../pipelines/jetson-csi.txt");
const JETSON_RTSP: &str = include_str!("../../pipelines/jetson-rtsp.txt");
const JETSON_FILE: &str = include_str!("../../pipelines/jetson-file.txt");

/// The gst-launch description for a spec: its template with the placeholders filled in
/// (`{uri}`, `{path}`, `{device}`, `{pattern}`, `{sensor}`, `{size}`, `{sync}`).
///
/// It contains the URI as given (credentials included): never log it, log `redact(uri)`.
pub fn describe(spec: &SourceSpec, kind: &SourceKind) -> String {
    let template = match kind {
        SourceKind::Rtsp(_) => RTSP,
        SourceKind::File(_) => FILE,
        SourceKind::V4l2(_) => V4L2,
        SourceKind::HttpMjpeg(_) => HTTP_MJPEG,
        SourceKind::Test(_) => TEST,
        SourceKind::JetsonCsi(_) => JETSON_CSI,
        SourceKind::JetsonRtsp(_) => JETSON_RTSP,
        SourceKind::JetsonFile(_) => JETSON_FILE,
    };
    let (key, value) = match kind {
        SourceKind::Rtsp(u) | SourceKind::HttpMjpeg(u) | SourceKind::JetsonRtsp(u) => {
            ("{uri}", quote(u))
        }
        SourceKind::File(p) | SourceKind::JetsonFile(p) => ("{path}", quote(&p.to_string_lossy())),
        SourceKind::V4l2(d) => ("{device}", quote(d)),
        SourceKind::Test(p) => ("{pattern}", p.clone()),
        SourceKind::JetsonCsi(id) => ("{sensor}", id.to_string()),
    };
    template_body(template)
        .replace(key, &value)
        .replace("{size}", &spec.size.to_string())
        .replace("{sync}", if spec.realtime { "true" } else { "false" })
        .replace(
            "{speed}",
            &match spec.retime {
                Some(r) if r.speed > 0.0 && r.fps > 0 => format!(
                    "! videorate rate={} ! video/x-raw,framerate={}/1",
                    r.speed, r.fps
                ),
                _ => String::new(),
            },
        )
}

/// A `pipelines/*.txt` template as one gst-launch line: `#` comment lines dropped, the rest
/// joined with spaces (placeholders left for the caller).
pub fn template_body(template: &str) -> String {
    let body: Vec<&str> = template
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    body.join(" ")
}

/// Quotes a property value for gst-launch syntax.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Parses the description into a pipeline that has the `sink` appsink and `tail` queue
/// every template must name.
pub(crate) fn build(
    spec: &SourceSpec,
    kind: &SourceKind,
    desc: &str,
) -> Result<gst::Pipeline, SourceError> {
    let err = |message: String| SourceError::Pipeline {
        camera: spec.name.clone(),
        kind: kind.name(),
        message: super::uri::scrub(&message, &spec.uri),
    };
    let element = gst::parse::launch(desc).map_err(|e| err(e.to_string()))?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| err("the template is not a pipeline".into()))?;
    if pipeline.by_name("sink").is_none() || pipeline.by_name("tail").is_none() {
        return Err(err(
            "the template must name an appsink 'sink' and a queue 'tail'".into(),
        ));
    }
    if let Some(src) = pipeline.by_name("src")
        && src.type_().name() == "GstRTSPSrc"
    {
        // Only the video stream: an unlinked audio pad would stop the pipeline.
        src.connect("select-stream", false, |args| {
            let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
            let video = caps
                .as_ref()
                .and_then(|c| c.structure(0))
                .and_then(|s| s.get::<&str>("media").ok())
                .is_none_or(|m| m == "video");
            Some(video.to_value())
        });
    }
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_quote() {
        let spec = SourceSpec::new("c", "rtsp://u:p@h/a\"b");
        let d = describe(&spec, &spec.kind().unwrap());
        assert!(d.contains(r#"location="rtsp://u:p@h/a\"b""#), "{d}");
        assert!(d.contains("width=224,height=224"));
        assert!(!d.contains('{'));
        let mut spec = SourceSpec::new("c", "/x/y z.mp4");
        spec.realtime = true;
        let d = describe(&spec, &spec.kind().unwrap());
        assert!(
            d.contains(r#"location="/x/y z.mp4""#) && d.contains("sync=true"),
            "{d}"
        );
        assert!(!d.contains("videorate") && !d.contains('{'), "{d}");
        spec.retime = Some(crate::source::Retime {
            speed: 2.4,
            fps: 30,
        });
        let d = describe(&spec, &spec.kind().unwrap());
        assert!(
            d.contains("! decodebin ! videorate rate=2.4 ! video/x-raw,framerate=30/1 ! queue"),
            "{d}"
        );
        for u in [
            "/dev/video0",
            "test:ball",
            "http://h/v.mjpg",
            "csi:0",
            "jetson:rtsp://h/x",
        ] {
            let s = SourceSpec::new("c", u);
            let d = describe(&s, &s.kind().unwrap());
            assert!(
                !d.contains('{') && d.contains("name=tail") && d.contains("name=sink"),
                "{d}"
            );
        }
    }
}
