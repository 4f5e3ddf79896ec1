//! Durable on-disk spool (redb): every event is committed (fsync) here before any sink sees it.
//!
//! Layout: `events` maps a contiguous sequence number to an encoded record (event JSON +
//! attachments + time queued); `cursors` maps a sink name to the next sequence it must
//! deliver; `meta` holds `next_seq` and `dropped`. Events below every configured sink's
//! cursor are deleted. Past `max_events` the oldest events are dropped and counted.

use crate::detector::event::Event;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MAGIC: &[u8; 4] = b"AGS1";

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the spool file.
    #[error(
        "spool {0} is in use by another advguard process (stop it, or point [spool].path elsewhere)"
    )]
    InUse(String),
    /// Storage error from redb.
    #[error("spool storage: {0}")]
    Db(String),
    /// A record could not be decoded.
    #[error("corrupt spool record {0}: {1}")]
    Corrupt(u64, String),
}

fn dberr<E: std::fmt::Display>(e: E) -> SpoolError {
    SpoolError::Db(e.to_string())
}

/// One spooled event.
#[derive(Debug, Clone)]
pub struct Record {
    /// Spool sequence number.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when it was spooled.
    pub queued_at_ms: u64,
    /// The event, with its attachments.
    pub event: Event,
}

/// Backlog of one sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    /// Events not yet delivered to the sink.
    pub queued: u64,
    /// When the oldest of them was spooled (ms since epoch).
    pub oldest_queued_at_ms: Option<u64>,
}

/// Result of an append.
#[derive(Debug, Clone, Copy, Default)]
pub struct Appended {
    /// Events written.
    pub written: u64,
    /// Oldest events dropped to stay within `max_events`.
    pub dropped: u64,
}

/// The spool. Cheap to share (`Arc`); all methods take `&self`.
pub struct Spool {
    db: Database,
    max_events: u64,
    sinks: Vec<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Spool {
    /// Opens (creating) the spool at `path` for the given sink names. Sinks new to this
    /// spool start at its tail (they do not replay older events).
    pub fn open(path: &Path, max_events: u64, sinks: &[String]) -> Result<Arc<Spool>, SpoolError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| SpoolError::Db(format!("creating {}: {e}", dir.display())))?;
        }
        let db = match Database::create(path) {
            Ok(d) => d,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(SpoolError::InUse(path.display().to_string()));
            }
            Err(e) => return Err(SpoolError::Db(format!("{}: {e}", path.display()))),
        };
        let txn = db.begin_write().map_err(db_err)?;
        {
            let _ = txn.open_table(EVENTS).map_err(dberr)?;
            let meta = txn.open_table(META).map_err(dberr)?;
            let next = meta
                .get("next_seq")
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut cur = txn.open_table(CURSORS).map_err(dberr)?;
            for s in sinks {
                if cur.get(s.as_str()).map_err(dberr)?.is_none() {
                    cur.insert(s.as_str(), next).map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(Arc::new(Spool {
            db,
            max_events: max_events.max(1),
            sinks: sinks.to_vec(),
        }))
    }

    /// Appends events in one durable (fsync'd) transaction.
    pub fn append(&self, events: &[Event]) -> Result<Appended, SpoolError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let mut txn = self.db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Immediate);
        let mut out = Appended::default();
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            let mut next = meta
                .get("next_seq")
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut dropped = meta
                .get("dropped")
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut tab = txn.open_table(EVENTS).map_err(dberr)?;
            let t = now_ms();
            for ev in events {
                while tab.len().map_err(dberr)? >= self.max_events {
                    if tab.pop_first().map_err(dberr)?.is_none() {
                        break;
                    }
                    out.dropped += 1;
                }
                tab.insert(next, encode(ev, t).as_slice()).map_err(dberr)?;
                next += 1;
                out.written += 1;
            }
            dropped += out.dropped;
            meta.insert("next_seq", next).map_err(dberr)?;
            meta.insert("dropped", dropped).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        Ok(out)
    }

    /// The next event `sink` has to deliver.
    pub fn next_for(&self, sink: &str) -> Result<Option<Record>, SpoolError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let cur = txn.open_table(CURSORS).map_err(dberr)?;
        let from = cur
            .get(sink)
            .map_err(dberr)?
            .map(|v| v.value())
            .unwrap_or(0);
        let tab = txn.open_table(EVENTS).map_err(dberr)?;
        let mut it = tab.range(from..).map_err(dberr)?;
        match it.next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(dberr)?;
                let seq = k.value();
                let (queued_at_ms, event) =
                    decode(v.value()).map_err(|m| SpoolError::Corrupt(seq, m))?;
                Ok(Some(Record {
                    seq,
                    queued_at_ms,
                    event,
                }))
            }
        }
    }

    /// Marks everything up to `seq` delivered for `sink`, and deletes events every sink has.
    /// The cursor is committed with eventual durability: after a crash a few events may be
    /// delivered again (at least once), never skipped.
    pub fn ack(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        let mut txn = self.db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Eventual);
        {
            let mut cur = txn.open_table(CURSORS).map_err(dberr)?;
            let old = cur
                .get(sink)
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(0);
            if seq + 1 > old {
                cur.insert(sink, seq + 1).map_err(dberr)?;
            }
            let mut min = u64::MAX;
            for s in &self.sinks {
                let c = cur
                    .get(s.as_str())
                    .map_err(dberr)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                min = min.min(c);
            }
            if min != u64::MAX {
                let mut tab = txn.open_table(EVENTS).map_err(dberr)?;
                tab.retain_in(..min, |_, _| false).map_err(dberr)?;
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(())
    }

    /// Backlog of `sink`.
    pub fn backlog(&self, sink: &str) -> Result<Backlog, SpoolError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let cur = txn.open_table(CURSORS).map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        let next = meta
            .get("next_seq")
            .map_err(dberr)?
            .map(|v| v.value())
            .unwrap_or(0);
        let from = cur
            .get(sink)
            .map_err(dberr)?
            .map(|v| v.value())
            .unwrap_or(next);
        let tab = txn.open_table(EVENTS).map_err(dberr)?;
        let mut it = tab.range(from..).map_err(dberr)?;
        match it.next() {
            None => Ok(Backlog::default()),
            Some(r) => {
                let (k, v) = r.map_err(dberr)?;
                let first = k.value();
                let t = decode_time(v.value());
                Ok(Backlog {
                    queued: next.saturating_sub(first),
                    oldest_queued_at_ms: t,
                })
            }
        }
    }

    /// Events in the spool (pending for at least one sink).
    pub fn len(&self) -> Result<u64, SpoolError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let tab = txn.open_table(EVENTS).map_err(dberr)?;
        tab.len().map_err(dberr)
    }

    /// True when the spool holds no event.
    pub fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }

    /// Total events ever dropped because the spool was full.
    pub fn dropped_total(&self) -> Result<u64, SpoolError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        Ok(meta
            .get("dropped")
            .map_err(dberr)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

fn db_err(e: redb::TransactionError) -> SpoolError {
    dberr(e)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    queued_at_ms: u64,
    event: Event,
}

/// Record layout: `AGS1` | u32 len | JSON head | u8 flags | [u32 len | jpeg] | [u32 len | png].
fn encode(ev: &Event, t: u64) -> Vec<u8> {
    let head = serde_json::to_vec(&Head {
        queued_at_ms: t,
        event: ev.clone(),
    })
    .expect("event serializes");
    let mut out = Vec::with_capacity(head.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    let flags = ev.snapshot_jpeg.is_some() as u8 | (ev.heatmap_png.is_some() as u8) << 1;
    out.push(flags);
    for a in [&ev.snapshot_jpeg, &ev.heatmap_png].into_iter().flatten() {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        out.extend_from_slice(a);
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("truncated".into());
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn take_u32(b: &mut &[u8]) -> Result<usize, String> {
    let s = take(b, 4)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn decode(mut b: &[u8]) -> Result<(u64, Event), String> {
    if take(&mut b, 4)? != MAGIC {
        return Err("bad magic".into());
    }
    let n = take_u32(&mut b)?;
    let head: Head = serde_json::from_slice(take(&mut b, n)?).map_err(|e| e.to_string())?;
    let flags = take(&mut b, 1)?[0];
    let mut ev = head.event;
    if flags & 1 != 0 {
        let n = take_u32(&mut b)?;
        ev.snapshot_jpeg = Some(Arc::new(take(&mut b, n)?.to_vec()));
    }
    if flags & 2 != 0 {
        let n = take_u32(&mut b)?;
        ev.heatmap_png = Some(Arc::new(take(&mut b, n)?.to_vec()));
    }
    Ok((head.queued_at_ms, ev))
}

fn decode_time(mut b: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct T {
        queued_at_ms: u64,
    }
    take(&mut b, 4).ok()?;
    let n = take_u32(&mut b).ok()?;
    let t: T = serde_json::from_slice(take(&mut b, n).ok()?).ok()?;
    Some(t.queued_at_ms)
}
