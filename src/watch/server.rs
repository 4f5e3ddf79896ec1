//! `/metrics` (Prometheus text format) and `/healthz` over tiny_http.

use super::health::HealthBoard;
use super::metrics::WatchMetrics;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running metrics server.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (e.g. `127.0.0.1:9464`; port 0 picks a free one) and serves in a thread.
    pub fn start(
        addr: &str,
        registry: Registry,
        metrics: WatchMetrics,
        health: HealthBoard,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
        let bound = match server.server_addr() {
            tiny_http::ListenAddr::IP(a) => a,
            #[allow(unreachable_patterns)]
            _ => anyhow::bail!("metrics: {addr} is not an IP address"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(req)) => answer(req, &registry, &metrics, &health),
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

fn answer(
    req: tiny_http::Request,
    registry: &Registry,
    metrics: &WatchMetrics,
    health: &HealthBoard,
) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let header = |v: &str| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes())
            .expect("static header is valid")
    };
    let resp = match path.as_str() {
        "/metrics" => {
            metrics.sync_sources();
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => tiny_http::Response::from_string(body).with_header(header(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
                Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(500),
            }
        }
        "/healthz" => {
            let cams = health.snapshot();
            let status = HealthBoard::status_of(&cams);
            let body = serde_json::json!({ "status": status, "cameras": cams }).to_string();
            tiny_http::Response::from_string(body)
                .with_header(header("application/json"))
                .with_status_code(if status == "ok" { 200 } else { 503 })
        }
        _ => tiny_http::Response::from_string("not found: try /metrics or /healthz\n")
            .with_status_code(404),
    };
    let _ = req.respond(resp);
}
