//! Durable on-disk spool (redb): every event is committed (fsync) here before any sink sees it.
//!
//! Layout: `events` maps a contiguous sequence number to an encoded record (event JSON +
//! attachments + time queued); `cursors` maps a sink name to the next sequence it must
//! deliver; `meta` holds `next_seq`, `dropped` and `corrupt`. Events below every configured
//! sink's cursor are deleted. Past `max_events` the oldest events are dropped and counted.
//!
//! Damage never takes the process down (see docs/RELIABILITY.md):
//! - [`Spool::open`] verifies the file (redb's checksums, then every record). Records that do
//!   not decode are deleted and counted. A file redb cannot read is moved aside to
//!   `<path>.corrupt-<ms>`, and the records that can still be read are copied into a fresh
//!   spool; [`Spool::recovery`] reports what was kept and lost. A non-empty file without
//!   redb's header is not ours and is never touched: that is an error.
//! - redb 2.6 meets some damaged files with a panic instead of an error (a truncated file, a
//!   garbled page). Every redb call runs under `catch_unwind`, and a panic becomes
//!   [`SpoolError::Internal`]; a redb handle that panicked is never written to again.
//! - After an I/O error (disk full) redb refuses every later transaction; the spool then
//!   reopens the file, at most once a second, until that works again.
//!
//! `open` tracks the events whose `end` was not spooled yet, in the same transaction as
//! their messages, so that after a crash [`Spool::open_events`] names the events left open
//! and the hub can close them (see `AlertHub::start`). A salvaged file loses this table.

use crate::detector::event::{Event, Phase};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `event_id` → JSON of the latest spooled message of every event whose `end` was not spooled.
const OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("open");
const MAGIC: &[u8; 4] = b"AGS1";
/// The first bytes of every redb file (redb's `MAGICNUMBER`).
const REDB_MAGIC: &[u8; 9] = b"redb\x1a\x0a\xa9\x0d\x0a";
/// How often a spool closed by an I/O error tries to reopen its file.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Records copied per transaction when salvaging a damaged file.
const SALVAGE_BATCH: usize = 256;

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
    /// The file exists, is not empty and is not a redb database: it is left untouched.
    #[error(
        "spool {0} is not an advguard spool (no redb header); refusing to overwrite it (point [spool].path at another file, or remove this one)"
    )]
    NotASpool(String),
    /// redb reports the file as damaged.
    #[error("spool file damaged: {0}")]
    Damaged(String),
    /// An I/O error, e.g. a full disk; the spool reopens its file before the next operation.
    #[error("spool I/O error (disk full?): {0}")]
    Io(String),
    /// redb panicked (a damaged file reached one of its assertions); the panic was contained.
    #[error("spool storage failed while {during}: redb panicked: {msg}")]
    Internal {
        /// The spool operation.
        during: &'static str,
        /// The panic message.
        msg: String,
    },
    /// The spool is closed after an I/O error and could not be reopened yet.
    #[error("spool {path} is unavailable after an I/O error: {msg}")]
    Unavailable {
        /// The spool file.
        path: String,
        /// The last error.
        msg: String,
    },
}

impl SpoolError {
    /// True for errors after which the redb handle must be reopened before further use.
    fn needs_reopen(&self) -> bool {
        matches!(
            self,
            SpoolError::Io(_) | SpoolError::Internal { .. } | SpoolError::Damaged(_)
        )
    }
}

/// Maps any redb error; I/O errors that mean "these bytes are not a valid file" are damage.
fn dberr<E: Into<redb::Error>>(e: E) -> SpoolError {
    use std::io::ErrorKind;
    match e.into() {
        redb::Error::Corrupted(m) => SpoolError::Damaged(m),
        redb::Error::Io(e)
            if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            SpoolError::Damaged(e.to_string())
        }
        redb::Error::Io(e) => SpoolError::Io(e.to_string()),
        redb::Error::PreviousIo => SpoolError::Io("an earlier write failed".into()),
        e => SpoolError::Db(e.to_string()),
    }
}

/// Runs `f` (redb calls) and turns a panic inside it into [`SpoolError::Internal`].
fn guarded<T>(
    during: &'static str,
    f: impl FnOnce() -> Result<T, SpoolError>,
) -> Result<T, SpoolError> {
    crate::contain::contain(f).unwrap_or_else(|msg| Err(SpoolError::Internal { during, msg }))
}

/// Drops a redb handle (its `Drop` writes to the file, which can panic on a damaged one).
fn close(db: Database) {
    if let Err(e) = guarded("closing", move || {
        drop(db);
        Ok(())
    }) {
        tracing::warn!("{e}");
    }
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

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Where the damaged file was moved, when redb could not use it.
    pub quarantined: Option<PathBuf>,
    /// Events kept (copied out of a quarantined file).
    pub kept: u64,
    /// Events that could not be read and were dropped.
    pub lost: u64,
    /// What was wrong; empty when the file was sound.
    pub reason: String,
}

impl Recovery {
    /// True when the file was sound and nothing was dropped.
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_none() && self.lost == 0
    }
}

/// The spool. Cheap to share (`Arc`); all methods take `&self`.
pub struct Spool {
    path: PathBuf,
    /// `None` while closed after an I/O error.
    db: RwLock<Option<Database>>,
    /// Set by an I/O error or a contained panic: when, and why.
    failed: Mutex<Option<(Instant, String)>>,
    max_events: u64,
    sinks: Vec<String>,
    /// What the last (re)open found.
    recovery: Mutex<Recovery>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, SpoolError> {
    Ok(meta
        .get(key)
        .map_err(dberr)?
        .map(|v| v.value())
        .unwrap_or(0))
}

impl Spool {
    /// Opens (creating) the spool at `path` for the given sink names. Sinks new to this
    /// spool start at its tail (they do not replay older events). A damaged file is repaired
    /// as far as it can be read (see the module doc and [`Spool::recovery`]).
    pub fn open(path: &Path, max_events: u64, sinks: &[String]) -> Result<Arc<Spool>, SpoolError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| SpoolError::Db(format!("creating {}: {e}", dir.display())))?;
        }
        let max_events = max_events.max(1);
        let (db, recovery) = open_or_recover(path, max_events)?;
        if let Err(e) = guarded("registering sinks", || init_tables(&db, sinks)) {
            close(db);
            return Err(at_path(path, e));
        }
        log_recovery(path, &recovery);
        Ok(Arc::new(Spool {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            failed: Mutex::new(None),
            max_events,
            sinks: sinks.to_vec(),
            recovery: Mutex::new(recovery),
        }))
    }

    /// What the last (re)opening found: a damaged file moved aside, events kept and lost.
    pub fn recovery(&self) -> Recovery {
        self.recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` on the redb handle: contains panics, and closes the handle after an I/O
    /// error or a panic so that the next call reopens the file.
    fn with_db<T>(
        &self,
        during: &'static str,
        f: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        self.reopen_if_due();
        let r = {
            let g = self.db.read().unwrap_or_else(|p| p.into_inner());
            let Some(db) = g.as_ref() else {
                return Err(self.unavailable());
            };
            guarded(during, || f(db))
        };
        if let Err(e) = &r
            && e.needs_reopen()
        {
            self.fail(e.to_string());
        }
        r
    }

    fn unavailable(&self) -> SpoolError {
        let msg = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        SpoolError::Unavailable {
            path: self.path.display().to_string(),
            msg,
        }
    }

    /// Closes the redb handle (redb refuses all work after an I/O error anyway).
    fn fail(&self, msg: String) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::warn!(spool = %self.path.display(), "alert spool closed after an error; reopening: {msg}");
        }
        *f = Some((Instant::now(), msg));
        drop(f);
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(db) = old {
            close(db);
        }
    }

    fn reopen_if_due(&self) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let Some((at, _)) = f.as_ref() else {
            return;
        };
        if at.elapsed() < REOPEN_EVERY {
            return;
        }
        let reopened = open_or_recover(&self.path, self.max_events).and_then(|(db, rec)| {
            match guarded("reopening", || init_tables(&db, &self.sinks)) {
                Ok(()) => Ok((db, rec)),
                Err(e) => {
                    close(db);
                    Err(e)
                }
            }
        });
        match reopened {
            Ok((db, rec)) => {
                tracing::info!(spool = %self.path.display(), "alert spool reopened");
                log_recovery(&self.path, &rec);
                if !rec.is_clean() {
                    *self.recovery.lock().unwrap_or_else(|p| p.into_inner()) = rec;
                }
                *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
                *f = None;
            }
            Err(e) => *f = Some((Instant::now(), e.to_string())),
        }
    }

    /// Appends events in one durable (fsync'd) transaction.
    pub fn append(&self, events: &[Event]) -> Result<Appended, SpoolError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let t = now_ms();
        let records: Vec<Vec<u8>> = events.iter().map(|ev| encode(ev, t)).collect();
        self.with_db("appending", |db| {
            let mut txn = db.begin_write().map_err(dberr)?;
            txn.set_durability(Durability::Immediate);
            let mut out = Appended::default();
            {
                let mut meta = txn.open_table(META).map_err(dberr)?;
                let mut next = meta_get(&meta, "next_seq")?;
                let dropped = meta_get(&meta, "dropped")?;
                let mut tab = txn.open_table(EVENTS).map_err(dberr)?;
                let mut open = txn.open_table(OPEN).map_err(dberr)?;
                for ev in events {
                    if ev.phase == Phase::End {
                        open.remove(ev.event_id.as_str()).map_err(dberr)?;
                    } else {
                        let json = serde_json::to_vec(ev).expect("event serializes");
                        open.insert(ev.event_id.as_str(), json.as_slice())
                            .map_err(dberr)?;
                    }
                }
                for rec in &records {
                    while tab.len().map_err(dberr)? >= self.max_events {
                        if tab.pop_first().map_err(dberr)?.is_none() {
                            break;
                        }
                        out.dropped += 1;
                    }
                    tab.insert(next, rec.as_slice()).map_err(dberr)?;
                    next += 1;
                    out.written += 1;
                }
                meta.insert("next_seq", next).map_err(dberr)?;
                meta.insert("dropped", dropped + out.dropped)
                    .map_err(dberr)?;
            }
            txn.commit().map_err(dberr)?;
            Ok(out)
        })
    }

    /// The latest spooled message of every event whose `end` was never spooled: at start-up,
    /// the events that a previous run left open when it died. Oldest first.
    pub fn open_events(&self) -> Result<Vec<Event>, SpoolError> {
        let raw = self.with_db("reading open events", |db| {
            let txn = db.begin_read().map_err(dberr)?;
            let open = match txn.open_table(OPEN) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(dberr(e)),
            };
            let mut out = Vec::new();
            for r in open.iter().map_err(dberr)? {
                let (k, v) = r.map_err(dberr)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        let mut events = Vec::new();
        for (id, json) in raw {
            match serde_json::from_slice::<Event>(&json) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    tracing::warn!(event_id = %id, "open-event record unreadable, skipped: {e}")
                }
            }
        }
        events.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(events)
    }

    /// The next event `sink` has to deliver. A record that does not decode is
    /// [`SpoolError::Corrupt`]; [`skip_corrupt`](Self::skip_corrupt) moves past it.
    pub fn next_for(&self, sink: &str) -> Result<Option<Record>, SpoolError> {
        let raw = self.with_db("reading", |db| {
            let txn = db.begin_read().map_err(dberr)?;
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
                    Ok(Some((k.value(), v.value().to_vec())))
                }
            }
        })?;
        let Some((seq, bytes)) = raw else {
            return Ok(None);
        };
        let (queued_at_ms, event) = decode_record(seq, &bytes)?;
        Ok(Some(Record {
            seq,
            queued_at_ms,
            event,
        }))
    }

    /// Moves `sink` past the undecodable record `seq` and counts it as corrupt.
    pub fn skip_corrupt(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        self.with_db("skipping a corrupt record", |db| {
            let txn = db.begin_write().map_err(dberr)?;
            {
                let mut meta = txn.open_table(META).map_err(dberr)?;
                let n = meta_get(&meta, "corrupt")?;
                meta.insert("corrupt", n + 1).map_err(dberr)?;
            }
            txn.commit().map_err(dberr)
        })?;
        self.ack(sink, seq)
    }

    /// Marks everything up to `seq` delivered for `sink`, and deletes events every sink has.
    /// The cursor is committed with eventual durability: after a crash a few events may be
    /// delivered again (at least once), never skipped.
    pub fn ack(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        self.with_db("recording a delivery", |db| {
            let mut txn = db.begin_write().map_err(dberr)?;
            txn.set_durability(Durability::Eventual);
            {
                let mut cur = txn.open_table(CURSORS).map_err(dberr)?;
                let old = cur
                    .get(sink)
                    .map_err(dberr)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                if seq.saturating_add(1) > old {
                    cur.insert(sink, seq.saturating_add(1)).map_err(dberr)?;
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
            txn.commit().map_err(dberr)
        })
    }

    /// Backlog of `sink`.
    pub fn backlog(&self, sink: &str) -> Result<Backlog, SpoolError> {
        self.with_db("reading the backlog", |db| {
            let txn = db.begin_read().map_err(dberr)?;
            let cur = txn.open_table(CURSORS).map_err(dberr)?;
            let meta = txn.open_table(META).map_err(dberr)?;
            let next = meta_get(&meta, "next_seq")?;
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
                    Ok(Backlog {
                        queued: next.saturating_sub(first),
                        oldest_queued_at_ms: decode_time(v.value()),
                    })
                }
            }
        })
    }

    /// Events in the spool (pending for at least one sink).
    pub fn len(&self) -> Result<u64, SpoolError> {
        self.with_db("counting", |db| {
            let txn = db.begin_read().map_err(dberr)?;
            let tab = txn.open_table(EVENTS).map_err(dberr)?;
            tab.len().map_err(dberr)
        })
    }

    /// True when the spool holds no event.
    pub fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }

    /// Total events ever dropped because the spool was full.
    pub fn dropped_total(&self) -> Result<u64, SpoolError> {
        self.meta_value("dropped")
    }

    /// Total events dropped because their record was corrupt (at open or when delivered).
    pub fn corrupt_total(&self) -> Result<u64, SpoolError> {
        self.meta_value("corrupt")
    }

    fn meta_value(&self, key: &'static str) -> Result<u64, SpoolError> {
        self.with_db("reading counters", |db| {
            let txn = db.begin_read().map_err(dberr)?;
            let meta = txn.open_table(META).map_err(dberr)?;
            meta_get(&meta, key)
        })
    }
}

fn log_recovery(path: &Path, r: &Recovery) {
    if !r.is_clean() {
        tracing::error!(
            spool = %path.display(),
            quarantined = ?r.quarantined,
            kept = r.kept,
            lost = r.lost,
            "alert spool was damaged ({}); kept what could be read",
            r.reason
        );
    }
}

fn at_path(path: &Path, e: SpoolError) -> SpoolError {
    match e {
        SpoolError::Db(m) => SpoolError::Db(format!("{}: {m}", path.display())),
        SpoolError::Io(m) => SpoolError::Io(format!("{}: {m}", path.display())),
        SpoolError::Damaged(m) => SpoolError::Damaged(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// Creates the tables and puts sinks new to this spool at its tail.
fn init_tables(db: &Database, sinks: &[String]) -> Result<(), SpoolError> {
    let txn = db.begin_write().map_err(dberr)?;
    {
        let _ = txn.open_table(EVENTS).map_err(dberr)?;
        let _ = txn.open_table(OPEN).map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        let next = meta_get(&meta, "next_seq")?;
        let mut cur = txn.open_table(CURSORS).map_err(dberr)?;
        for s in sinks {
            if cur.get(s.as_str()).map_err(dberr)?.is_none() {
                cur.insert(s.as_str(), next).map_err(dberr)?;
            }
        }
    }
    txn.commit().map_err(dberr)
}

/// Opens the redb file and checks its checksums. Refuses files that are not redb's.
fn open_db(path: &Path) -> Result<Database, SpoolError> {
    let mut head = [0u8; REDB_MAGIC.len()];
    let n = match std::fs::File::open(path) {
        Ok(f) => f.take(head.len() as u64).read(&mut head).unwrap_or(0),
        Err(_) => 0,
    };
    if n > 0 && head[..n] != REDB_MAGIC[..n] {
        return Err(SpoolError::NotASpool(path.display().to_string()));
    }
    let mut db = guarded("opening", || match Database::create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(SpoolError::InUse(path.display().to_string()))
        }
        Err(e) => Err(at_path(path, dberr(e))),
    })?;
    match guarded("checking integrity", || db.check_integrity().map_err(dberr)) {
        Ok(_) => Ok(db),
        Err(e) => {
            close(db);
            Err(at_path(path, e))
        }
    }
}

/// Sequence numbers of the records that do not decode; an error if the tables are unreadable.
fn undecodable(db: &Database) -> Result<Vec<u64>, SpoolError> {
    guarded("verifying records", || {
        let txn = db.begin_read().map_err(dberr)?;
        for t in [META, CURSORS].map(|d| txn.open_table(d)) {
            match t {
                Ok(t) => {
                    for r in t.iter().map_err(dberr)? {
                        r.map_err(dberr)?;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(dberr(e)),
            }
        }
        let tab = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(dberr(e)),
        };
        let mut bad = Vec::new();
        for r in tab.iter().map_err(dberr)? {
            let (k, v) = r.map_err(dberr)?;
            if decode(v.value()).is_err() {
                bad.push(k.value());
            }
        }
        Ok(bad)
    })
}

/// Deletes undecodable records and counts them in `meta.corrupt`.
fn remove_records(db: &Database, bad: &[u64]) -> Result<(), SpoolError> {
    guarded("removing corrupt records", || {
        let txn = db.begin_write().map_err(dberr)?;
        {
            let mut tab = txn.open_table(EVENTS).map_err(dberr)?;
            for s in bad {
                tab.remove(*s).map_err(dberr)?;
            }
            let mut meta = txn.open_table(META).map_err(dberr)?;
            let n = meta_get(&meta, "corrupt")?;
            meta.insert("corrupt", n + bad.len() as u64)
                .map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    })
}

fn is_damage(e: &SpoolError) -> bool {
    matches!(e, SpoolError::Damaged(_) | SpoolError::Internal { .. })
}

/// Opens the file, verifying it; repairs what it can (see the module doc).
fn open_or_recover(path: &Path, max_events: u64) -> Result<(Database, Recovery), SpoolError> {
    let db = match open_db(path) {
        Ok(db) => db,
        Err(e) if is_damage(&e) => return rebuild(path, None, max_events, e.to_string()),
        Err(e) => return Err(e),
    };
    match undecodable(&db) {
        Ok(bad) if bad.is_empty() => Ok((db, Recovery::default())),
        Ok(bad) => match remove_records(&db, &bad) {
            Ok(()) => Ok((
                db,
                Recovery {
                    lost: bad.len() as u64,
                    reason: format!("{} records did not decode", bad.len()),
                    ..Default::default()
                },
            )),
            Err(e) => rebuild(path, Some(db), max_events, e.to_string()),
        },
        Err(e) if is_damage(&e) => rebuild(path, Some(db), max_events, e.to_string()),
        Err(e) => {
            close(db);
            Err(e)
        }
    }
}

/// Moves the damaged file aside, creates a fresh spool at `path` and copies into it every
/// record of `old` (when redb could open it at all) that still reads and decodes.
fn rebuild(
    path: &Path,
    old: Option<Database>,
    max_events: u64,
    reason: String,
) -> Result<(Database, Recovery), SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "spool".into());
    let q = path.with_file_name(format!("{name}.corrupt-{}", now_ms()));
    if let Err(e) = std::fs::rename(path, &q) {
        if let Some(db) = old {
            close(db);
        }
        return Err(SpoolError::Damaged(format!(
            "{} is damaged ({reason}) and could not be moved aside: {e}",
            path.display()
        )));
    }
    let new = open_db(path)?;
    let mut rec = Recovery {
        quarantined: Some(q),
        reason,
        ..Default::default()
    };
    if let Some(old) = old {
        let r = salvage(&old, &new, max_events, &mut rec);
        close(old);
        if let Err(e) = r {
            close(new);
            return Err(e);
        }
    }
    Ok((new, rec))
}

/// Reads one value of the old file in its own transaction (a panic loses only that key).
fn old_get<T>(
    db: &Database,
    f: impl FnOnce(&redb::ReadTransaction) -> Result<T, SpoolError>,
) -> Result<T, SpoolError> {
    guarded("salvaging", || {
        let txn = db.begin_read().map_err(dberr)?;
        f(&txn)
    })
}

fn salvage(
    old: &Database,
    new: &Database,
    max_events: u64,
    rec: &mut Recovery,
) -> Result<(), SpoolError> {
    let meta = |key: &'static str| {
        old_get(old, |t| meta_get(&t.open_table(META).map_err(dberr)?, key)).ok()
    };
    let (next_seq, dropped, corrupt) = (meta("next_seq"), meta("dropped"), meta("corrupt"));
    let cursors: Vec<(String, u64)> = old_get(old, |t| {
        let c = t.open_table(CURSORS).map_err(dberr)?;
        let mut out = Vec::new();
        for r in c.iter().map_err(dberr)? {
            let (k, v) = r.map_err(dberr)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    })
    .unwrap_or_default();
    let first = old_get(old, |t| {
        let tab = t.open_table(EVENTS).map_err(dberr)?;
        Ok(tab.first().map_err(dberr)?.map(|(k, _)| k.value()))
    })
    .ok()
    .flatten();
    let last = old_get(old, |t| {
        let tab = t.open_table(EVENTS).map_err(dberr)?;
        Ok(tab.last().map_err(dberr)?.map(|(k, _)| k.value()))
    })
    .ok()
    .flatten();
    // Sequence numbers are contiguous: the live events are [first, next_seq). Either bound
    // may be unreadable; never scan more than the spool could hold.
    let hi = match (next_seq, last) {
        (Some(n), Some(l)) => n.max(l.saturating_add(1)),
        (Some(n), None) => n,
        (None, Some(l)) => l.saturating_add(1),
        (None, None) => cursors.iter().map(|c| c.1).max().unwrap_or(0),
    };
    let floor = hi.saturating_sub(max_events);
    let lo = first
        .or_else(|| cursors.iter().map(|c| c.1).min())
        .unwrap_or(floor)
        .clamp(floor, hi);
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    for seq in lo..hi {
        let got = old_get(old, |t| {
            let tab = t.open_table(EVENTS).map_err(dberr)?;
            Ok(tab.get(seq).map_err(dberr)?.map(|v| v.value().to_vec()))
        });
        match got {
            Ok(Some(b)) if decode(&b).is_ok() => batch.push((seq, b)),
            Ok(None) => {}
            _ => rec.lost += 1,
        }
        if batch.len() >= SALVAGE_BATCH {
            rec.kept += batch.len() as u64;
            write_salvaged(new, &std::mem::take(&mut batch), &[], None)?;
        }
    }
    rec.kept += batch.len() as u64;
    let counters = [
        ("next_seq", hi),
        ("dropped", dropped.unwrap_or(0)),
        ("corrupt", corrupt.unwrap_or(0) + rec.lost),
    ];
    write_salvaged(new, &batch, &cursors, Some(&counters))
}

fn write_salvaged(
    db: &Database,
    records: &[(u64, Vec<u8>)],
    cursors: &[(String, u64)],
    meta: Option<&[(&str, u64)]>,
) -> Result<(), SpoolError> {
    guarded("writing salvaged records", || {
        let mut txn = db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Immediate);
        {
            let mut tab = txn.open_table(EVENTS).map_err(dberr)?;
            for (seq, b) in records {
                tab.insert(*seq, b.as_slice()).map_err(dberr)?;
            }
            let mut cur = txn.open_table(CURSORS).map_err(dberr)?;
            for (s, c) in cursors {
                cur.insert(s.as_str(), *c).map_err(dberr)?;
            }
            if let Some(m) = meta {
                let mut t = txn.open_table(META).map_err(dberr)?;
                for (k, v) in m {
                    t.insert(*k, *v).map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)
    })
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

/// Encodes one spool record (the value stored per sequence number) for an event queued at `t`.
pub fn encode_record(ev: &Event, t: u64) -> Vec<u8> {
    encode(ev, t)
}

/// Decodes one spool record into (time queued in ms, event); `seq` names it in the error.
pub fn decode_record(seq: u64, b: &[u8]) -> Result<(u64, Event), SpoolError> {
    decode(b).map_err(|m| SpoolError::Corrupt(seq, m))
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
