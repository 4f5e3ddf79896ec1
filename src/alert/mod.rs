//! Alert sinks: durable spool, then webhook / MQTT / exec / file delivery.
//! (skeleton: owned by the alert work; `config` types are referenced by `watch::config`.)

pub mod config;
