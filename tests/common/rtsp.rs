//! A real gst-rtsp-server on 127.0.0.1 for tests and demos, serving an H.264 MP4 at /cam.
//!
//! The server runs in its own thread with its own GLib main context. The clip's H.264
//! is re-payloaded, not re-encoded (cheap on 2 cores); every client gets its own media
//! from the start of the clip, so a client that reconnects after the clip ends
//! effectively loops it. `stop()` removes the mount, closes every client connection
//! and the listening socket, so clients really see the server die, and `start_on`
//! can bind the same port again.

#![allow(dead_code)]

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A real gst-rtsp-server on 127.0.0.1:<port> serving a file at /cam.
pub struct RtspServer {
    port: u16,
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
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
        let mut last = String::new();
        for _ in 0..50 {
            match Self::try_start(file, port) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("RTSP test server cannot listen on 127.0.0.1:{port}: {last}");
    }

    fn try_start(file: &Path, port: u16) -> Result<RtspServer, String> {
        let launch = format!(
            "( filesrc location=\"{}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            file.display()
        );
        let (tx, rx) = mpsc::channel::<Result<(u16, glib::MainLoop), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("rtsp-server-{port}"))
            .spawn(move || serve(&launch, port, tx))
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((port, main_loop))) => Ok(RtspServer {
                port,
                main_loop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(e) => Err(format!("server thread did not start: {e}")),
        }
    }

    /// rtsp://127.0.0.1:PORT/cam
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it: clients see their connection drop, the port is free again.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Server thread: listens, reports the port, serves until the loop quits, then tears down.
fn serve(launch: &str, port: u16, tx: mpsc::Sender<Result<(u16, glib::MainLoop), String>>) {
    let ctx = glib::MainContext::new();
    let main_loop = glib::MainLoop::new(Some(&ctx), false);
    let res = ctx.with_thread_default(|| {
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let Some(mounts) = server.mount_points() else {
            let _ = tx.send(Err("no mount points".into()));
            return;
        };
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(false);
        mounts.add_factory("/cam", factory);
        let source = match server.attach(Some(&ctx)) {
            Ok(id) => id,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok((server.bound_port() as u16, main_loop.clone())));
        main_loop.run();
        mounts.remove_factory("/cam");
        // Closing the clients closes their TCP connections: what a crash looks like to them.
        server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        if let Some(pool) = server.session_pool() {
            pool.filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        }
        // Removing the listening source drops the last reference to the server socket.
        // (g_source_remove would look in the global default context, not ours.)
        if let Some(s) = ctx.find_source_by_id(&source) {
            s.destroy();
        }
        while ctx.iteration(false) {}
    });
    if let Err(e) = res {
        eprintln!("RTSP test server: {e}");
    }
}
