//! Serves an H.264 MP4 over RTSP on 127.0.0.1 (the test server, for demos by hand).
//!
//! `cargo run --example rtsp_serve -- FILE.mp4 [PORT]` prints the URL and serves
//! until killed; clients that reconnect after the clip ends get it from the start.

#[path = "../tests/common/rtsp.rs"]
mod rtsp;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: rtsp_serve FILE.mp4 [PORT]");
        std::process::exit(2);
    };
    let port = match args.next().map(|p| p.parse::<u16>()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("error: bad port: {e}");
            std::process::exit(2);
        }
    };
    let file = std::path::PathBuf::from(file);
    if !file.is_file() {
        eprintln!("error: no file {}", file.display());
        std::process::exit(2);
    }
    let server = rtsp::RtspServer::start_on(&file, port);
    println!("{}", server.url());
    loop {
        std::thread::park();
    }
}
