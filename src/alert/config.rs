//! Alert configuration as it appears in the cameras TOML: `[[sink]]` tables, one `[spool]`
//! table and one `[alerts]` table (noise control). See `docs/ALERTS.md`.
//!
//! Parsing is strict (`deny_unknown_fields`); the error names the offending key.
//! Strings may contain `${ENV_VAR}`; they are expanded by [`SinkConfig::resolve`]
//! (called by [`crate::alert::AlertHub::start`]), which also validates URLs.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Sink kinds accepted in `kind = "..."`.
pub const SINK_KINDS: &[&str] = &["webhook", "mqtt", "exec", "file"];

/// One `[[sink]]` table, tagged by `kind`.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `kind = "webhook"`: HTTP POST of the event JSON, HMAC-signed.
    Webhook(WebhookConfig),
    /// `kind = "mqtt"`: Frigate-like topics on an MQTT broker.
    Mqtt(MqttConfig),
    /// `kind = "exec"`: runs a command with the event JSON on stdin.
    Exec(ExecConfig),
    /// `kind = "file"`: appends JSON lines to a size-rotated file.
    File(FileConfig),
}

/// `kind = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Sink name (unique; keys the spool cursor). Default: `webhook`, `webhook-2`, ...
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` or `https://` URL the event is POSTed to.
    pub url: String,
    /// Shared secret for `X-Advguard-Signature` (use `${ENV_VAR}`). No header when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Per-request timeout, seconds.
    #[serde(default = "d_timeout")]
    pub timeout_secs: f64,
    /// Add `snapshot_jpeg_base64` / `heatmap_png_base64` to the JSON body when present.
    #[serde(default = "d_true")]
    pub attachments: bool,
    /// Extra HTTP headers (values may use `${ENV_VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `kind = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Sink name. Default: `mqtt`.
    #[serde(default)]
    pub name: Option<String>,
    /// Broker host.
    #[serde(default = "d_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "d_mqtt_port")]
    pub port: u16,
    /// MQTT client id. Default: `advguard-<topic_prefix>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username (optional).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (optional; use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
    /// Topic prefix.
    #[serde(default = "d_prefix")]
    pub topic_prefix: String,
    /// Publish `<prefix>/<camera>/snapshot` (JPEG) and `<prefix>/<camera>/heatmap` (PNG).
    #[serde(default = "d_true")]
    pub snapshots: bool,
    /// Retain the snapshot/heat-map messages (like Frigate).
    #[serde(default = "d_true")]
    pub retain_snapshots: bool,
    /// MQTT keep-alive, seconds.
    #[serde(default = "d_keepalive")]
    pub keep_alive_secs: u64,
    /// How long one publish may wait for its PUBACK, seconds.
    #[serde(default = "d_timeout")]
    pub timeout_secs: f64,
}

/// `kind = "exec"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Sink name. Default: `exec`.
    #[serde(default)]
    pub name: Option<String>,
    /// argv; no shell unless you run one (`["/bin/sh", "-c", "..."]`).
    pub command: Vec<String>,
    /// The process (group) is killed after this many seconds; counts as a failure.
    #[serde(default = "d_timeout")]
    pub timeout_secs: f64,
}

/// `kind = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Sink name. Default: `file`.
    #[serde(default)]
    pub name: Option<String>,
    /// JSONL file; rotated files are `<path>.1` (newest) .. `<path>.<keep>`.
    pub path: String,
    /// Rotate before a line would make the file larger than this.
    #[serde(default = "d_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "d_keep")]
    pub keep: usize,
}

/// The `[spool]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// redb file. Default: `<data dir>/advguard/spool.redb` (e.g. `~/.local/share/advguard/spool.redb`).
    #[serde(default)]
    pub path: Option<String>,
    /// Most events kept; past it the OLDEST are dropped (counted + warned).
    #[serde(default = "d_max_events")]
    pub max_events: u64,
    /// Capacity of the in-memory hand-off queue in front of the spool writer.
    #[serde(default = "d_queue")]
    pub queue: usize,
    /// First retry delay, milliseconds (doubles per failure, ±25 % jitter).
    #[serde(default = "d_retry_initial")]
    pub retry_initial_ms: u64,
    /// Retry delay cap, milliseconds.
    #[serde(default = "d_retry_max")]
    pub retry_max_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: None,
            max_events: d_max_events(),
            queue: d_queue(),
            retry_initial_ms: d_retry_initial(),
            retry_max_ms: d_retry_max(),
        }
    }
}

impl SpoolConfig {
    /// The spool file path (expanded), default when not set.
    pub fn resolved_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.path {
            Some(p) => Ok(PathBuf::from(
                expand_env(p).map_err(|e| e.at("spool.path"))?,
            )),
            None => Ok(dirs::data_local_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("advguard")
                .join("spool.redb")),
        }
    }
}

/// The `[alerts]` table: noise control, applied per camera before the spool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// After an `end`, a new `start` on the same camera within this many seconds is
    /// suppressed (with its updates and end) unless it outlasts the cooldown. 0 = off.
    #[serde(default = "d_cooldown")]
    pub cooldown_secs: f64,
    /// At most one `update` per camera per this many seconds. 0 = no throttling.
    #[serde(default = "d_update_interval")]
    pub update_interval_secs: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            cooldown_secs: d_cooldown(),
            update_interval_secs: d_update_interval(),
        }
    }
}

impl AlertsConfig {
    /// No cooldown, no throttling (every message passes).
    pub fn pass_all() -> Self {
        AlertsConfig {
            cooldown_secs: 0.0,
            update_interval_secs: 0.0,
        }
    }
}

fn d_timeout() -> f64 {
    10.0
}
fn d_true() -> bool {
    true
}
fn d_host() -> String {
    "127.0.0.1".into()
}
fn d_mqtt_port() -> u16 {
    1883
}
fn d_prefix() -> String {
    "advguard".into()
}
fn d_keepalive() -> u64 {
    30
}
fn d_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn d_keep() -> usize {
    5
}
fn d_max_events() -> u64 {
    10_000
}
fn d_queue() -> usize {
    1024
}
fn d_retry_initial() -> u64 {
    500
}
fn d_retry_max() -> u64 {
    60_000
}
fn d_cooldown() -> f64 {
    30.0
}
fn d_update_interval() -> f64 {
    10.0
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut t = toml::Table::deserialize(d)?;
        let kind = match t.remove("kind") {
            None => {
                return Err(D::Error::custom(format!(
                    "[[sink]] is missing key `kind` (one of: {})",
                    SINK_KINDS.join(", ")
                )));
            }
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "[[sink]] key `kind` must be a string, got {other}"
                )));
            }
        };
        let v = toml::Value::Table(t);
        let r = match kind.as_str() {
            "webhook" => v.try_into().map(SinkConfig::Webhook),
            "mqtt" => v.try_into().map(SinkConfig::Mqtt),
            "exec" => v.try_into().map(SinkConfig::Exec),
            "file" => v.try_into().map(SinkConfig::File),
            other => {
                return Err(D::Error::custom(format!(
                    "[[sink]] key `kind`: unknown sink kind `{other}` (expected one of: {})",
                    SINK_KINDS.join(", ")
                )));
            }
        };
        r.map_err(|e: toml::de::Error| {
            D::Error::custom(format!(
                "[[sink]] kind = \"{kind}\": {}",
                e.message().trim()
            ))
        })
    }
}

/// A configuration error that names the key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {msg}")]
pub struct ConfigError {
    /// Dotted key, e.g. `sink[0].secret`.
    pub key: String,
    /// What is wrong.
    pub msg: String,
}

/// Error from [`expand_env`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `${NAME}` names a variable that is not set (or not UTF-8).
    #[error("environment variable `{0}` is not set")]
    Missing(String),
    /// `${` without a closing `}`, or an empty / invalid name.
    #[error("malformed `${{...}}` reference in {0:?}")]
    Malformed(String),
}

impl EnvError {
    /// Attach the config key this error came from.
    pub fn at(self, key: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            msg: self.to_string(),
        }
    }
}

/// Replaces every `${NAME}` with the value of environment variable `NAME`.
/// `$$` is a literal `$`; a `$` not followed by `{` or `$` is kept as is.
/// Errors name the missing variable.
pub fn expand_env(s: &str) -> Result<String, EnvError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('{') {
            let end = a
                .find('}')
                .ok_or_else(|| EnvError::Malformed(s.to_string()))?;
            let name = &a[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(EnvError::Malformed(s.to_string()));
            }
            let val = std::env::var(name).map_err(|_| EnvError::Missing(name.to_string()))?;
            out.push_str(&val);
            rest = &a[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl SinkConfig {
    /// `webhook`, `mqtt`, `exec` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::Exec(_) => "exec",
            SinkConfig::File(_) => "file",
        }
    }

    /// The configured `name`, if any.
    pub fn configured_name(&self) -> Option<&str> {
        match self {
            SinkConfig::Webhook(c) => c.name.as_deref(),
            SinkConfig::Mqtt(c) => c.name.as_deref(),
            SinkConfig::Exec(c) => c.name.as_deref(),
            SinkConfig::File(c) => c.name.as_deref(),
        }
    }

    /// Expands `${ENV}` in every string field and validates values. `index` is the
    /// position in `[[sink]]`, used in error keys (`sink[1].url`).
    pub fn resolve(&self, index: usize) -> Result<SinkConfig, ConfigError> {
        let key = |k: &str| format!("sink[{index}].{k}");
        let ex = |k: &str, v: &str| expand_env(v).map_err(|e| e.at(key(k)));
        let exo = |k: &str, v: &Option<String>| v.as_deref().map(|v| ex(k, v)).transpose();
        let bad = |k: &str, msg: String| ConfigError { key: key(k), msg };
        let pos = |k: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(k, format!("must be > 0, got {v}")))
            }
        };
        Ok(match self {
            SinkConfig::Webhook(c) => {
                let url = ex("url", &c.url)?;
                validate_http_url(&url).map_err(|m| bad("url", m))?;
                pos("timeout_secs", c.timeout_secs)?;
                let mut headers = BTreeMap::new();
                for (k, v) in &c.headers {
                    headers.insert(k.clone(), ex(&format!("headers.{k}"), v)?);
                }
                SinkConfig::Webhook(WebhookConfig {
                    name: exo("name", &c.name)?,
                    url,
                    secret: exo("secret", &c.secret)?,
                    timeout_secs: c.timeout_secs,
                    attachments: c.attachments,
                    headers,
                })
            }
            SinkConfig::Mqtt(c) => {
                let host = ex("host", &c.host)?;
                if host.is_empty() || host.contains(['/', ' ', ':']) && !host.starts_with('[') {
                    return Err(bad(
                        "host",
                        format!("not a host name: {host:?} (use `port` for the port)"),
                    ));
                }
                let topic_prefix = ex("topic_prefix", &c.topic_prefix)?;
                if topic_prefix.is_empty() || topic_prefix.contains(['+', '#']) {
                    return Err(bad(
                        "topic_prefix",
                        format!("invalid MQTT topic prefix {topic_prefix:?}"),
                    ));
                }
                pos("timeout_secs", c.timeout_secs)?;
                SinkConfig::Mqtt(MqttConfig {
                    name: exo("name", &c.name)?,
                    host,
                    port: c.port,
                    client_id: exo("client_id", &c.client_id)?,
                    username: exo("username", &c.username)?,
                    password: exo("password", &c.password)?,
                    topic_prefix: topic_prefix.trim_end_matches('/').to_string(),
                    snapshots: c.snapshots,
                    retain_snapshots: c.retain_snapshots,
                    keep_alive_secs: c.keep_alive_secs.max(5),
                    timeout_secs: c.timeout_secs,
                })
            }
            SinkConfig::Exec(c) => {
                if c.command.is_empty() || c.command[0].is_empty() {
                    return Err(bad("command", "must be a non-empty argv array".into()));
                }
                pos("timeout_secs", c.timeout_secs)?;
                let command = c
                    .command
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ex(&format!("command[{i}]"), a))
                    .collect::<Result<Vec<_>, _>>()?;
                SinkConfig::Exec(ExecConfig {
                    name: exo("name", &c.name)?,
                    command,
                    timeout_secs: c.timeout_secs,
                })
            }
            SinkConfig::File(c) => {
                let path = ex("path", &c.path)?;
                if path.is_empty() {
                    return Err(bad("path", "must not be empty".into()));
                }
                if c.max_bytes == 0 {
                    return Err(bad("max_bytes", "must be > 0".into()));
                }
                SinkConfig::File(FileConfig {
                    name: exo("name", &c.name)?,
                    path,
                    max_bytes: c.max_bytes,
                    keep: c.keep,
                })
            }
        })
    }
}

fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if let Some(r) = url.strip_prefix("https://") {
        r
    } else {
        return Err(format!(
            "bad URL {url:?}: must start with http:// or https://"
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || url.contains(char::is_whitespace) {
        return Err(format!("bad URL {url:?}: no host"));
    }
    ureq::post(url)
        .request_url()
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    Ok(())
}

/// The alert part of the cameras TOML: `[[sink]]`, `[spool]`, `[alerts]`; other
/// top-level tables (`[[camera]]`, ...) are ignored here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AlertFile {
    /// `[[sink]]` tables.
    #[serde(default)]
    pub sink: Vec<SinkConfig>,
    /// `[spool]`.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[alerts]`.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

impl AlertFile {
    /// Parses the alert tables of a TOML document.
    pub fn parse(text: &str) -> Result<AlertFile, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a config file; errors carry the path.
    pub fn load(path: &std::path::Path) -> anyhow::Result<AlertFile> {
        use anyhow::Context;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f = Self::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(f)
    }
}

/// Resolves all sinks (env expansion, validation) and assigns unique names.
/// Returns `(name, resolved config)` pairs.
pub fn resolve_sinks(sinks: &[SinkConfig]) -> Result<Vec<(String, SinkConfig)>, ConfigError> {
    let mut out: Vec<(String, SinkConfig)> = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let r = s.resolve(i)?;
        let name = match r.configured_name() {
            Some(n) => {
                if n.is_empty() || out.iter().any(|(m, _)| m == n) {
                    return Err(ConfigError {
                        key: format!("sink[{i}].name"),
                        msg: format!("sink name {n:?} is empty or used twice"),
                    });
                }
                n.to_string()
            }
            None => {
                let base = r.kind();
                let mut n = base.to_string();
                let mut k = 2;
                while out.iter().any(|(m, _)| *m == n)
                    || sinks.iter().any(|s| s.configured_name() == Some(&n))
                {
                    n = format!("{base}-{k}");
                    k += 1;
                }
                n
            }
        };
        out.push((name, r));
    }
    Ok(out)
}
