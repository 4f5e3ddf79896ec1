//! The watch HTTP server (tiny_http, one thread): `/metrics` (Prometheus text format),
//! `/healthz`, and the live page: `/` (HTML), `/api/state` (JSON the page polls),
//! `/camera/<name>/frame.jpg` (latest explain picture), `/event/<id>/snapshot.jpg` and
//! `/event/<id>/heatmap.png`. The page routes follow [`PageAccess`]; metrics and health are
//! open as before.

use super::health::HealthBoard;
use super::metrics::WatchMetrics;
use super::page::access::PageAccess;
use super::page::{self, PageBoard};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The live page a server shows, and who may see it.
#[derive(Clone)]
pub struct PageOptions {
    /// What the cameras left for the page.
    pub board: PageBoard,
    /// The page token (`--page-token`); `None` or empty: none.
    pub token: Option<String>,
}

/// A running metrics server.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the server thread answers from.
struct Ctx {
    registry: Registry,
    metrics: WatchMetrics,
    health: HealthBoard,
    page: Option<(PageBoard, PageAccess)>,
}

impl MetricsServer {
    /// Binds `addr` (e.g. `127.0.0.1:9464`; port 0 picks a free one) and serves in a thread;
    /// with `page`, also the live page (off, with a warning, on a non-loopback address
    /// without a token).
    pub fn start(
        addr: &str,
        registry: Registry,
        metrics: WatchMetrics,
        health: HealthBoard,
        page: Option<PageOptions>,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
        let bound = match server.server_addr() {
            tiny_http::ListenAddr::IP(a) => a,
            #[allow(unreachable_patterns)]
            _ => anyhow::bail!("metrics: {addr} is not an IP address"),
        };
        let page = page.map(|p| {
            let access = PageAccess::decide(bound, p.token.as_deref());
            match &access {
                PageAccess::Disabled(why) => tracing::warn!("{why}"),
                PageAccess::Open => tracing::info!("live page on http://{bound}/"),
                PageAccess::Token(_) => {
                    tracing::info!("live page on http://{bound}/ (page token required)")
                }
            }
            (p.board, access)
        });
        let ctx = Ctx {
            registry,
            metrics,
            health,
            page,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(req)) => answer(req, &ctx),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics server stopped");
                            break;
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Resp = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), v.as_bytes()).expect("static header is valid")
}

fn text(status: u16, body: impl Into<String>) -> Resp {
    tiny_http::Response::from_string(body.into())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn bytes(body: &[u8], content_type: &str) -> Resp {
    tiny_http::Response::from_data(body.to_vec())
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

fn answer(req: tiny_http::Request, ctx: &Ctx) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let resp = match path {
        "/metrics" => {
            ctx.metrics.sync_sources();
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &ctx.registry) {
                Ok(()) => tiny_http::Response::from_string(body).with_header(header(
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
                Err(e) => text(500, e.to_string()),
            }
        }
        "/healthz" => {
            let cams = ctx.health.snapshot();
            let status = HealthBoard::status_of(&cams);
            let body = serde_json::json!({ "status": status, "cameras": cams }).to_string();
            tiny_http::Response::from_string(body)
                .with_header(header("Content-Type", "application/json"))
                .with_status_code(if status == "ok" { 200 } else { 503 })
        }
        _ => match &ctx.page {
            None => text(404, "not found: try /metrics or /healthz\n"),
            Some((board, access)) => {
                let auth = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.as_str().to_string());
                match access {
                    PageAccess::Disabled(why) => text(403, format!("{why}\n")),
                    a if !a.allows(auth.as_deref(), query) => text(
                        401,
                        "page token required: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                    )
                    .with_header(header("WWW-Authenticate", "Bearer")),
                    _ => page_route(path, board, &ctx.health),
                }
            }
        },
    };
    let _ = req.respond(resp);
}

/// The page routes, once access is granted.
fn page_route(path: &str, board: &PageBoard, health: &HealthBoard) -> Resp {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decoded = |s: &str| page::urldecode(s);
    match parts.as_slice() {
        [""] | ["index.html"] => bytes(page::INDEX_HTML.as_bytes(), "text/html; charset=utf-8"),
        ["api", "state"] => bytes(
            board.state(health).to_string().as_bytes(),
            "application/json",
        ),
        ["camera", name, "frame.jpg"] => match decoded(name).and_then(|n| board.frame_jpeg(&n)) {
            Some(j) => bytes(&j, "image/jpeg"),
            None => text(404, "no frame for this camera yet\n"),
        },
        ["event", id, "snapshot.jpg"] => match decoded(id).and_then(|i| board.snapshot(&i)) {
            Some(j) => bytes(&j, "image/jpeg"),
            None => text(404, "no snapshot for this event\n"),
        },
        ["event", id, "heatmap.png"] => match decoded(id).and_then(|i| board.heatmap(&i)) {
            Some(p) => bytes(&p, "image/png"),
            None => text(404, "no heat map for this event\n"),
        },
        _ => text(404, "not found: try /, /api/state, /metrics or /healthz\n"),
    }
}
