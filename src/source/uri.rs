//! Credential redaction for anything that logs or reports a URI.

/// Query keys whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "pass",
    "password",
    "pwd",
    "token",
    "key",
    "secret",
    "auth",
    "sig",
    "signature",
];

/// Redacts credentials in URIs for logs: rtsp://user:pass@host → rtsp://user:***@host.
///
/// A bare userinfo without a colon (often a token) becomes `***@`, and the values of
/// query parameters that look like secrets (`token=`, `password=`, …) become `***`.
/// Strings without `://` (file paths, `/dev/video0`) come back unchanged.
pub fn redact(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &uri[rest_start..];
    let auth_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(c) => {
                    out.push_str(&userinfo[..c]);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[auth_len..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let (query, frag) = match tail[q + 1..].find('#') {
                Some(h) => (&tail[q + 1..q + 1 + h], &tail[q + 1 + h..]),
                None => (&tail[q + 1..], ""),
            };
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
            out.push_str(frag);
        }
        None => out.push_str(tail),
    }
    out
}

/// Removes a URI's credentials from any text that may quote it (GStreamer's messages).
pub(crate) fn scrub(text: &str, uri: &str) -> String {
    let mut out = text.replace(uri, &redact(uri));
    if let Some(pass) = password(uri) {
        out = out.replace(pass, "***");
    }
    out
}

/// The password part of a URI's userinfo, if any.
fn password(uri: &str) -> Option<&str> {
    let rest = &uri[uri.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let pass = &userinfo[userinfo.find(':')? + 1..];
    (!pass.is_empty()).then_some(pass)
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS
        .iter()
        .any(|s| k == *s || k.ends_with(&format!("_{s}")))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redact("rtsp://admin:hunter2@10.0.0.5:554/stream1"),
            "rtsp://admin:***@10.0.0.5:554/stream1"
        );
        assert_eq!(
            redact("http://tok3n@cam/video.mjpg"),
            "http://***@cam/video.mjpg"
        );
        assert_eq!(
            redact("https://cam/v.mjpg?user=a&password=b&x=1#f"),
            "https://cam/v.mjpg?user=a&password=***&x=1#f"
        );
        // '@' inside the path is not userinfo.
        assert_eq!(redact("rtsp://cam/a@b"), "rtsp://cam/a@b");
        assert_eq!(redact("/data/clip.mp4"), "/data/clip.mp4");
        assert_eq!(redact("rtsp://u:p:q@h/x"), "rtsp://u:***@h/x");
        let uri = "rtsp://u:pw1@h/x";
        assert_eq!(
            super::scrub("could not open rtsp://u:pw1@h/x (auth pw1)", uri),
            "could not open rtsp://u:***@h/x (auth ***)"
        );
    }
}
