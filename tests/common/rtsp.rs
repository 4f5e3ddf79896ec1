//! A real gst-rtsp-server on 127.0.0.1 for tests and demos, serving an H.264 MP4 at /cam.
//!
//! The server runs in its own thread with its own GLib main context. The clip's H.264
//! is re-payloaded, not re-encoded (cheap on 2 cores); every client gets its own media
//! from the start of the clip, so a client that reconnects after the clip ends
//! effectively loops it. `stop()` removes the mount, closes every client connection
//! and the listening socket, so clients really see the server die, and `start_on`
//! can bind the same port again.

#![allow(dead_code)]

use advguard::watch::overlay_rtsp::RtspServer as Server;
use gstreamer as gst;
use std::path::Path;
use std::time::Duration;

/// A real gst-rtsp-server on 127.0.0.1:<port> serving a file at /cam.
pub struct RtspServer {
    port: u16,
    server: Option<Server>,
}

impl RtspServer {
    /// Starts on a free port.
    pub fn start(file: &Path) -> RtspServer {
        Self::start_on(file, 0)
    }

    /// Starts on `port` (0 = any free port); retries briefly while the port is still held.
    pub fn start_on(file: &Path, port: u16) -> RtspServer {
        gst::init().expect("GStreamer init");
        assert!(
            file.is_file(),
            "RTSP test server: no file {}",
            file.display()
        );
        let launch = format!(
            "( filesrc location=\"{}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            file.display()
        );
        let mut last = String::new();
        for _ in 0..50 {
            match Server::start("127.0.0.1", port) {
                Ok(s) => {
                    s.mount_launch("/cam", &launch, false);
                    return RtspServer {
                        port: s.port(),
                        server: Some(s),
                    };
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("RTSP test server cannot listen on 127.0.0.1:{port}: {last}");
    }

    /// rtsp://127.0.0.1:PORT/cam
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mounts one more stream at `path`, from a gst-rtsp-server launch line; each client
    /// gets its own media.
    pub fn mount_launch(&self, path: &str, launch: &str) {
        self.server
            .as_ref()
            .expect("running")
            .mount_launch(path, launch, false);
    }

    /// Kills it: clients see their connection drop, the port is free again.
    pub fn stop(mut self) {
        // Dropping the server quits its loop, closes every client and the listening socket.
        self.server.take();
    }
}
