//! `--overlay rtsp://HOST:PORT/PATH`: serves the explain view live from gst-rtsp-server, so an
//! operator opens it in VLC/ffplay next to the camera's own stream.
//!
//! One server per address, on its own thread and GLib main context; each camera is a shared
//! mount whose media is built when the first client connects (`pipelines/overlay-rtsp.txt`).
//! Engine workers push rendered frames into the mount's appsrc when a client is watching and
//! skip the encoding otherwise. The appsrc is leaky and non-blocking, so a slow viewer drops
//! overlay frames and never slows the guard.

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use image::{RgbImage, imageops};
use std::sync::{Arc, Mutex};

const TEMPLATE: &str = include_str!("../../pipelines/overlay-rtsp.txt");

/// Where an RTSP overlay is served: bind host, port and mount path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspTarget {
    /// Address to bind (127.0.0.1 keeps it local).
    pub host: String,
    /// TCP port (8554 when the URL has none).
    pub port: u16,
    /// Mount path, starting with '/'.
    pub path: String,
}

impl RtspTarget {
    /// Parses `rtsp://HOST[:PORT]/PATH`.
    pub fn parse(url: &str) -> anyhow::Result<RtspTarget> {
        let bad = |why: &str| {
            anyhow::anyhow!("--overlay {url}: {why} (expected rtsp://HOST[:PORT]/PATH)")
        };
        let rest = url
            .strip_prefix("rtsp://")
            .ok_or_else(|| bad("not an rtsp:// URL"))?;
        let (hostport, path) = rest.split_once('/').ok_or_else(|| bad("no mount path"))?;
        if hostport.contains('@') {
            return Err(bad("credentials are not supported on the served overlay"));
        }
        let path = path.trim_end_matches('/');
        if path.is_empty()
            || !path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(bad(
                "the mount path must be non-empty and use only A-Z a-z 0-9 - _ . /",
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number 0-65535"))?,
            ),
            None => (hostport, 8554),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(RtspTarget {
            host: host.to_string(),
            port,
            path: format!("/{path}"),
        })
    }

    /// The same target with `-suffix` appended to the mount path (one mount per camera).
    pub fn with_suffix(&self, suffix: &str) -> RtspTarget {
        RtspTarget {
            path: format!("{}-{suffix}", self.path),
            ..self.clone()
        }
    }

    /// `rtsp://host:port/path`.
    pub fn url(&self) -> String {
        format!("rtsp://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A gst-rtsp-server on its own thread and GLib context: overlay mounts, or any launch line
/// (the tests serve real clips with it).
pub struct RtspServer {
    mounts: rtsp::RTSPMountPoints,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
}

impl RtspServer {
    /// Binds `host:port` and starts serving (no mounts yet).
    pub fn start(host: &str, port: u16) -> anyhow::Result<RtspServer> {
        gst::init()?;
        // gst-rtsp-server only says "failed to attach"; a probe bind gives the OS's reason.
        if port != 0 {
            std::net::TcpListener::bind((host, port))
                .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let host = host.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("overlay-rtsp-{port}"))
            .spawn(move || serve(&host, port, tx))?;
        match rx.recv() {
            Ok(Ok((mounts, main_loop, port))) => Ok(RtspServer {
                mounts,
                main_loop,
                thread: Some(thread),
                port,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(anyhow::anyhow!("cannot serve RTSP on port {port}: {e}"))
            }
            Err(_) => Err(anyhow::anyhow!("the RTSP server thread died")),
        }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mounts a gst-rtsp-server launch line (`( … ! rtpXpay name=pay0 )`) at `path`; `shared`:
    /// one media for all clients, else each client gets its own from the start.
    pub fn mount_launch(&self, path: &str, launch: &str, shared: bool) -> rtsp::RTSPMediaFactory {
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        self.mounts.add_factory(path, factory.clone());
        factory
    }

    /// Adds a mount at `path` for frames of `size`×`size` model pixels.
    pub fn mount(&self, path: &str, size: u32) -> RtspOverlay {
        let (width, height) = (size * super::overlay::SCALE, size * super::overlay::SCALE);
        // One encoder per camera however many viewers.
        let factory = self.mount_launch(path, &describe(width, height), true);
        let slot: Arc<Mutex<Option<gst_app::AppSrc>>> = Arc::default();
        let s = slot.clone();
        factory.connect_media_configure(move |_, media| {
            let Some(src) = media
                .element()
                .downcast::<gst::Bin>()
                .ok()
                .and_then(|b| b.by_name_recurse_up("src"))
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            else {
                tracing::error!("overlay RTSP media has no appsrc named src");
                return;
            };
            *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(src);
            let s2 = s.clone();
            media.connect_unprepared(move |_| {
                *s2.lock().unwrap_or_else(|p| p.into_inner()) = None;
            });
        });
        RtspOverlay {
            slot,
            width,
            height,
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The launch line of one mount.
fn describe(width: u32, height: u32) -> String {
    crate::source::template_body(TEMPLATE)
        .replace("{width}", &width.to_string())
        .replace("{height}", &height.to_string())
}

type Ready = Result<(rtsp::RTSPMountPoints, glib::MainLoop, u16), String>;

/// Server thread: binds, reports, serves until the loop quits, then closes its clients.
fn serve(host: &str, port: u16, tx: std::sync::mpsc::Sender<Ready>) {
    let ctx = glib::MainContext::new();
    let main_loop = glib::MainLoop::new(Some(&ctx), false);
    let res = ctx.with_thread_default(|| {
        let server = rtsp::RTSPServer::new();
        server.set_address(host);
        server.set_service(&port.to_string());
        let Some(mounts) = server.mount_points() else {
            let _ = tx.send(Err("no mount points".into()));
            return;
        };
        let source = match server.attach(Some(&ctx)) {
            Ok(id) => id,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok((mounts, main_loop.clone(), server.bound_port() as u16)));
        main_loop.run();
        server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        if let Some(pool) = server.session_pool() {
            pool.filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        }
        // Our context, not the global default one, owns the listening source.
        if let Some(s) = ctx.find_source_by_id(&source) {
            s.destroy();
        }
        while ctx.iteration(false) {}
    });
    if let Err(e) = res {
        tracing::error!("overlay RTSP server: {e}");
    }
}

/// One camera's mount: frames go out only while someone watches.
pub struct RtspOverlay {
    slot: Arc<Mutex<Option<gst_app::AppSrc>>>,
    width: u32,
    height: u32,
}

impl RtspOverlay {
    /// True while a client is connected (the worker renders only then).
    pub fn watched(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Pushes one rendered frame; the appsrc stamps it with the pipeline's running time.
    pub fn push(&self, img: RgbImage) {
        let Some(src) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let img = if img.width() != self.width || img.height() != self.height {
            imageops::resize(
                &img,
                self.width,
                self.height,
                imageops::FilterType::Triangle,
            )
        } else {
            img
        };
        // A flow error means the viewer went away mid-push; the next connect builds new media.
        let _ = src.push_buffer(gst::Buffer::from_mut_slice(img.into_raw()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = RtspTarget::parse("rtsp://127.0.0.1:8600/overlay").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8600, "/overlay")
        );
        assert_eq!(
            t.with_suffix("door").url(),
            "rtsp://127.0.0.1:8600/overlay-door"
        );
        let t = RtspTarget::parse("rtsp://0.0.0.0/live/explain/").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8554, "/live/explain"));
        for bad in [
            "http://x/y",
            "rtsp://127.0.0.1:8554",
            "rtsp://127.0.0.1:8554/",
            "rtsp://u:p@127.0.0.1/x",
            "rtsp://127.0.0.1:99999/x",
            "rtsp://:8554/x",
            "rtsp://h/a b",
        ] {
            let e = RtspTarget::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--overlay {bad}:")), "{e}");
        }
    }
}
