//! The usage spool: the way usage crosses a zero-downtime upgrade when only one process may hold
//! the store (the embedded backend).
//!
//! After the old process has handed over its listening sockets, it writes its statistics to the
//! store, releases the store, and from then on appends the usage of its remaining requests to
//! `spool/<pid>-<millis>.jsonl` under the data directory: one JSON [`UsageEvent`] per line, synced
//! to disk after each batch. It holds an exclusive `flock` on that file for as long as it lives,
//! so a file whose lock is free belongs to a process that is gone. A process that owns the store
//! claims such files (it takes the lock itself), adds them to the statistics and deletes them.
//!
//! Exactly once, except for one window: a process that dies between adding a file to the store and
//! deleting it counts that file again at the next start.
//!
//! The files are lines of any serde type: the request log spools its records the same way, in a
//! directory of its own ([`crate::usage::request_log`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::{BucketKey, Dimension, Granularity, UsageCounters};
use crate::usage::UsageEvent;

/// A `.part` file (created, not yet locked and renamed) older than this was left by a crash.
const STALE_PART: Duration = Duration::from_secs(60);

/// One line of a spool file.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Line {
    /// Counters the old process could not write to the store before handing it over.
    Bucket {
        bucket: SpoolBucket,
        counters: UsageCounters,
    },
    Event(UsageEvent),
}

#[derive(Serialize, Deserialize)]
pub(super) struct SpoolBucket {
    dimension: Dimension,
    subject: String,
    granularity: Granularity,
    start: i64,
}

pub(super) enum Parts {
    Event(UsageEvent),
    Bucket(BucketKey, UsageCounters),
}

impl Line {
    pub(super) fn event(ev: &UsageEvent) -> Line {
        Line::Event(ev.clone())
    }

    pub(super) fn bucket(k: &BucketKey, c: &UsageCounters) -> Line {
        Line::Bucket {
            bucket: SpoolBucket {
                dimension: k.dimension,
                subject: k.subject.clone(),
                granularity: k.granularity,
                start: k.start,
            },
            counters: *c,
        }
    }

    pub(super) fn into_parts(self) -> Parts {
        match self {
            Line::Event(ev) => Parts::Event(ev),
            Line::Bucket { bucket: b, counters } => Parts::Bucket(
                BucketKey {
                    dimension: b.dimension,
                    subject: b.subject,
                    granularity: b.granularity,
                    start: b.start,
                },
                counters,
            ),
        }
    }
}

/// This process's spool file, locked until the process exits.
pub(crate) struct SpoolWriter {
    file: File,
    path: PathBuf,
    /// Length of the complete lines written so far (a failed write is cut back to it).
    len: u64,
    buf: Vec<u8>,
}

impl SpoolWriter {
    /// Creates and locks a new spool file in `dir`. It is created under a `.part` name and renamed
    /// once locked, so no other process can take it for abandoned in between.
    pub(crate) fn create(dir: &Path) -> io::Result<SpoolWriter> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let name = format!("{}-{}.jsonl", std::process::id(), chrono::Utc::now().timestamp_millis());
        let part = dir.join(format!("{name}.part"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)?;
        file.try_lock().map_err(io::Error::from)?;
        let path = dir.join(name);
        std::fs::rename(&part, &path)?;
        // Make the new name durable too.
        File::open(dir).and_then(|d| d.sync_all())?;
        Ok(SpoolWriter {
            file,
            path,
            len: 0,
            buf: Vec::new(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines and syncs them to disk.
    pub(crate) fn append<T: Serialize>(&mut self, lines: impl Iterator<Item = T>) -> io::Result<()> {
        self.buf.clear();
        for line in lines {
            serde_json::to_writer(&mut self.buf, &line)?;
            self.buf.push(b'\n');
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.buf).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // No half line may stay in front of the retry.
                let _ = self.file.set_len(self.len);
                let _ = std::io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }

    /// Syncs the file; the lock goes with the process (or this handle).
    pub(crate) fn finish(self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// A spool file of a process that is gone, locked by this process while it is being added.
pub(crate) struct Claimed<T> {
    _file: File,
    path: PathBuf,
    lines: Vec<T>,
}

impl<T> Claimed<T> {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn take_lines(&mut self) -> Vec<T> {
        std::mem::take(&mut self.lines)
    }

    /// Deletes the file (still holding its lock, so nobody claims it in between).
    pub(crate) fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Claims every spool file in `dir` whose writer is gone.
pub(crate) fn claim_abandoned<T: DeserializeOwned>(dir: &Path) -> Vec<Claimed<T>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot read the spool directory");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = name.ends_with(".jsonl")
            || name.ends_with(".jsonl.part")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_PART);
        if !wanted {
            continue;
        }
        match claim(&path) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot read a spool file"),
        }
    }
    out
}

/// `None` while the writer lives (its lock is held), or when another process already took the
/// file and deleted it.
fn claim<T: DeserializeOwned>(path: &Path) -> io::Result<Option<Claimed<T>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    if file.metadata()?.nlink() == 0 {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    for (i, text) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(text) {
            Ok(l) => lines.push(l),
            // A line cut by a crash, or one this relay cannot read.
            Err(e) => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping an unreadable spool line")
            }
        }
    }
    Ok(Some(Claimed {
        _file: file,
        path: path.to_path_buf(),
        lines,
    }))
}
