//! `kind = "webhook"`: HTTP POST of the event JSON, signed with HMAC-SHA256.

use super::{Sink, SinkError, event_json};
use crate::alert::config::WebhookConfig;
use crate::detector::event::Event;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the value of `X-Advguard-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Advguard-Signature` header value against the body (constant time).
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hexsig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hexsig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The webhook sink.
pub struct WebhookSink {
    name: String,
    cfg: WebhookConfig,
    agent: ureq::Agent,
}

impl WebhookSink {
    /// From a resolved config.
    pub fn new(name: &str, cfg: &WebhookConfig) -> Result<Self, SinkError> {
        let t = Duration::from_secs_f64(cfg.timeout_secs);
        let agent = ureq::AgentBuilder::new()
            .timeout(t)
            .user_agent(concat!("advguard/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(WebhookSink {
            name: name.to_string(),
            cfg: cfg.clone(),
            agent,
        })
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let body = event_json(ev, self.cfg.attachments);
        let mut req = self
            .agent
            .post(&self.cfg.url)
            .set("Content-Type", "application/json")
            .set("X-Advguard-Event-Id", &ev.id);
        for (k, v) in &self.cfg.headers {
            req = req.set(k, v);
        }
        if let Some(s) = &self.cfg.secret {
            req = req.set("X-Advguard-Signature", &sign(s.as_bytes(), &body));
        }
        match req.send_bytes(&body) {
            Ok(resp) => {
                let _ = resp.into_string();
                Ok(())
            }
            Err(ureq::Error::Status(code, resp)) => {
                let txt = resp.into_string().unwrap_or_default();
                let txt: String = txt.chars().take(200).collect();
                Err(SinkError(format!(
                    "HTTP {code} from {}: {}",
                    self.cfg.url,
                    txt.trim()
                )))
            }
            Err(e) => Err(SinkError(format!("POST {}: {e}", self.cfg.url))),
        }
    }
}
