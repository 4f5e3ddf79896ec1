//! `kind = "file"`: JSON lines, rotated by size (`path`, `path.1` newest .. `path.<keep>`).

use super::{Sink, SinkError};
use crate::alert::config::FileConfig;
use crate::detector::event::Event;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// The file sink.
pub struct FileSink {
    name: String,
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<(File, u64)>,
}

impl FileSink {
    /// From a resolved config.
    pub fn new(name: &str, cfg: &FileConfig) -> Result<Self, SinkError> {
        let path = PathBuf::from(&cfg.path);
        if let Some(d) = path.parent()
            && !d.as_os_str().is_empty()
        {
            std::fs::create_dir_all(d)
                .map_err(|e| SinkError(format!("creating {}: {e}", d.display())))?;
        }
        Ok(FileSink {
            name: name.to_string(),
            path,
            max_bytes: cfg.max_bytes,
            keep: cfg.keep,
            file: None,
        })
    }

    fn rotated(&self, i: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            return std::fs::remove_file(&self.path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            });
        }
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for i in (1..self.keep).rev() {
            let from = self.rotated(i);
            if from.exists() {
                std::fs::rename(&from, self.rotated(i + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let len = f.metadata()?.len();
            self.file = Some((f, len));
        }
        let len = self.file.as_ref().map(|(_, l)| *l).unwrap_or(0);
        if len > 0 && len + line.len() as u64 > self.max_bytes {
            self.rotate()?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some((f, 0));
        }
        let (f, len) = self.file.as_mut().expect("opened");
        f.write_all(line)?;
        f.sync_data()?;
        *len += line.len() as u64;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let mut line = serde_json::to_vec(ev).expect("event serializes");
        line.push(b'\n');
        self.write_line(&line).map_err(|e| {
            self.file = None;
            SinkError(format!("writing {}: {e}", self.path.display()))
        })
    }
}
