//! `kind = "exec"`: runs `command` (argv) with the event JSON on stdin.
//!
//! Environment: `ADVGUARD_EVENT_ID`, `ADVGUARD_ID`, `ADVGUARD_PHASE`, `ADVGUARD_CAMERA`, and
//! `ADVGUARD_SNAPSHOT_JPEG` / `ADVGUARD_HEATMAP_PNG` (paths of temporary files, removed after
//! the command exits) when the event has them. The command runs in its own process group;
//! at the timeout the whole group is killed (SIGKILL). Non-zero exit = failure, retried.

use super::{Sink, SinkError};
use crate::alert::config::ExecConfig;
use crate::detector::event::Event;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exec sink.
pub struct ExecSink {
    name: String,
    cfg: ExecConfig,
}

impl ExecSink {
    /// From a resolved config.
    pub fn new(name: &str, cfg: &ExecConfig) -> Self {
        ExecSink {
            name: name.to_string(),
            cfg: cfg.clone(),
        }
    }
}

struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Sink for ExecSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let json = serde_json::to_vec(ev).expect("event serializes");
        let mut cmd = Command::new(&self.cfg.command[0]);
        cmd.args(&self.cfg.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("ADVGUARD_EVENT_ID", &ev.event_id)
            .env("ADVGUARD_ID", &ev.id)
            .env(
                "ADVGUARD_PHASE",
                serde_json::to_value(ev.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            )
            .env("ADVGUARD_CAMERA", &ev.camera)
            .process_group(0);
        let mut tmp = TempFiles(Vec::new());
        for (var, ext, data) in [
            ("ADVGUARD_SNAPSHOT_JPEG", "jpg", &ev.snapshot_jpeg),
            ("ADVGUARD_HEATMAP_PNG", "png", &ev.heatmap_png),
        ] {
            if let Some(d) = data {
                let p = std::env::temp_dir().join(format!(
                    "advguard-{}-{}.{ext}",
                    std::process::id(),
                    uuid::Uuid::new_v4()
                ));
                std::fs::write(&p, d.as_slice())
                    .map_err(|e| SinkError(format!("writing {}: {e}", p.display())))?;
                cmd.env(var, &p);
                tmp.0.push(p);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| SinkError(format!("spawning {:?}: {e}", self.cfg.command[0])))?;
        let pid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::spawn(move || {
                let _ = stdin.write_all(&json);
            });
        }
        let (etx, erx) = crossbeam_channel::bounded(1);
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut stderr).take(4096).read_to_end(&mut buf);
                let _ = etx.send(String::from_utf8_lossy(&buf).into_owned());
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            });
        }
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.timeout_secs);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    // Kill the whole process group, then the child itself.
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SinkError(format!(
                        "{:?} timed out after {} s and was killed",
                        self.cfg.command[0], self.cfg.timeout_secs
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    return Err(SinkError(format!(
                        "waiting for {:?}: {e}",
                        self.cfg.command[0]
                    )));
                }
            }
        };
        if status.success() {
            Ok(())
        } else {
            let err = erx
                .recv_timeout(Duration::from_millis(200))
                .unwrap_or_default();
            Err(SinkError(format!(
                "{:?} exited with {status}: {}",
                self.cfg.command[0],
                err.trim()
            )))
        }
    }
}
