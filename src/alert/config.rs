//! Alert configuration as it appears in the cameras TOML (`[[sink]]`, `[spool]`).

use serde::Deserialize;

/// One `[[sink]]` table. (placeholder until the sinks land)
pub type SinkConfig = toml::Value;

/// The `[spool]` table. (placeholder until the spool lands)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {}
