//! A minimal advguard webhook receiver: verifies `X-Advguard-Signature` and dedupes by `id`.
//!
//! ```text
//! ADVGUARD_WEBHOOK_SECRET=changeme cargo run --example webhook_receiver -- 127.0.0.1:8099
//! ```
//! Then point a `[[sink]] kind = "webhook"` at `http://127.0.0.1:8099/` with
//! `secret = "${ADVGUARD_WEBHOOK_SECRET}"`. Delivery is at least once: the same `id` can
//! arrive more than once (after a retry or a restart), so receivers must dedupe by it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};

/// Constant-time check of `sha256=<hex>` against HMAC-SHA256(secret, body).
fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let secret = std::env::var("ADVGUARD_WEBHOOK_SECRET")
        .map_err(|_| anyhow::anyhow!("set ADVGUARD_WEBHOOK_SECRET to the sink's secret"))?;
    let server =
        tiny_http::Server::http(&addr).map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    eprintln!("listening on http://{addr}/");
    // Remember the last 10 000 ids.
    let (mut seen, mut order) = (HashSet::new(), VecDeque::new());
    for mut req in server.incoming_requests() {
        let mut body = Vec::new();
        if req.as_reader().read_to_end(&mut body).is_err() {
            continue;
        }
        let sig = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Advguard-Signature"))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_default();
        if !verify(secret.as_bytes(), &body, &sig) {
            eprintln!("rejected: bad signature");
            let _ = req
                .respond(tiny_http::Response::from_string("bad signature").with_status_code(401));
            continue;
        }
        let ev: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let _ = req
                    .respond(tiny_http::Response::from_string(e.to_string()).with_status_code(400));
                continue;
            }
        };
        let id = ev["id"].as_str().unwrap_or_default().to_string();
        // Answer 2xx for duplicates too, or advguard retries them forever.
        let _ = req.respond(tiny_http::Response::from_string("ok"));
        if !seen.insert(id.clone()) {
            eprintln!("duplicate {id} ignored");
            continue;
        }
        order.push_back(id.clone());
        if order.len() > 10_000
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        println!(
            "{} {} camera={} score={} snapshot={}",
            ev["phase"].as_str().unwrap_or("?"),
            id,
            ev["camera"].as_str().unwrap_or("?"),
            ev["score"],
            ev.get("snapshot_jpeg_base64").is_some()
        );
    }
    Ok(())
}
