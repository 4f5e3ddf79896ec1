//! The demo clip is fetched like a model: URL + sha256, through a `.part` file, tested against a
//! real HTTP server on loopback serving the real clip.

use std::path::PathBuf;
use std::process::{Command, Output};

fn clip() -> PathBuf {
    advguard::data_dir().join("videos/car-detection.mp4")
}

/// Serves `bytes` for up to `requests` requests; returns the URL.
fn serve(bytes: Vec<u8>, requests: usize) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let port = server.server_addr().to_ip().expect("ip").port();
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok(Some(req)) = server.recv_timeout(std::time::Duration::from_secs(60)) else {
                return;
            };
            let _ = req.respond(tiny_http::Response::from_data(bytes.clone()));
        }
    });
    format!("http://127.0.0.1:{port}/car-detection.mp4")
}

/// Runs `fetch-clip` with no shared data (an empty ADVGUARD_DATA) and a fresh cache.
fn fetch(data: &std::path::Path, cache: &std::path::Path, url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env("ADVGUARD_DATA", data)
        .env("ADVGUARD_CACHE", cache)
        .env("NO_COLOR", "1")
        .args(["fetch-clip", "car-detection", "--url", url])
        .output()
        .expect("run")
}

#[test]
fn clip_is_downloaded_checked_and_then_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, cache) = (tmp.path().join("empty"), tmp.path().join("cache"));
    std::fs::create_dir_all(&data).expect("mkdir");
    let bytes = std::fs::read(clip()).expect("shared clip");
    let url = serve(bytes.clone(), 1);
    let o = fetch(&data, &cache, &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(path, cache.join("clips/car-detection.mp4"));
    assert_eq!(std::fs::read(&path).expect("fetched"), bytes);
    // Second run: the server is gone (it served one request), the cached copy is used.
    let o = fetch(&data, &cache, &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        path.display().to_string()
    );
}

#[test]
fn a_wrong_clip_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, cache) = (tmp.path().join("empty"), tmp.path().join("cache"));
    std::fs::create_dir_all(&data).expect("mkdir");
    let mut bytes = std::fs::read(clip()).expect("shared clip");
    bytes.truncate(bytes.len() / 2);
    let o = fetch(&data, &cache, &serve(bytes, 1));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sha256") || err.contains("checksum"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    let clips = cache.join("clips");
    let left = std::fs::read_dir(&clips).map_or(0, |d| d.count());
    assert_eq!(left, 0, "nothing may be left in {}", clips.display());
}

#[test]
fn unknown_clip_names_the_known_ones() {
    let o = Command::new(env!("CARGO_BIN_EXE_advguard"))
        .args(["fetch-clip", "nope"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown clip") && err.contains("car-detection"),
        "{err}"
    );
}
