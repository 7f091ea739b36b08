//! Scheduled backups (`backup:` in relay.yaml): every `every`, on period boundaries aligned on
//! UTC, a backup file `claude-relay-backup-<UTC time>.json` is written into `dir` (whole or not
//! at all, mode 0600) and only the newest `keep` are kept.
//!
//! With several instances on one Redis, each period's backup is written by one of them: the one
//! that takes the period's lease in the coordination store first (a lease that outlives the
//! period, so a late instance does not write it again).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::BackupError;
use crate::config::BackupConfig;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use crate::store::Store;
use crate::store::coord::Coordination;

/// What every backup file's name starts with.
pub const FILE_PREFIX: &str = "claude-relay-backup-";

/// The scheduled backups of one instance.
pub struct Scheduled {
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
    /// The coordination shared with the other instances; `None` on a single-instance store.
    pub coord: Option<Arc<dyn Coordination>>,
    pub config: BackupConfig,
    pub metrics: Arc<Metrics>,
    /// This instance's id (the lease holder).
    pub instance: String,
}

impl Scheduled {
    /// Writes a backup at the end of every period, for ever (a loop the server's tasks own).
    pub async fn run_forever(self) {
        let every_ms = i64::try_from(self.config.every.0.as_millis())
            .unwrap_or(i64::MAX)
            .max(1000);
        loop {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let next = (now_ms.div_euclid(every_ms) + 1).saturating_mul(every_ms);
            tokio::time::sleep(Duration::from_millis(u64::try_from(next - now_ms).unwrap_or(0))).await;
            let slot = next / every_ms;
            if !self.claim(slot, every_ms).await {
                continue;
            }
            match self.once().await {
                Ok(path) => {
                    self.metrics.backup_runs.with_label_values(&["ok"]).inc();
                    self.metrics.backup_last_success.set(chrono::Utc::now().timestamp());
                    tracing::info!(path = %path.display(), "scheduled backup written");
                }
                Err(e) => {
                    self.metrics.backup_runs.with_label_values(&["failed"]).inc();
                    tracing::error!(error = %e, dir = %self.config.dir().display(), "scheduled backup failed");
                }
            }
        }
    }

    /// Whether this instance writes the backup of period `slot`.
    async fn claim(&self, slot: i64, every_ms: i64) -> bool {
        let Some(coord) = &self.coord else {
            return true;
        };
        // Held past the period's end, so an instance whose clock is late cannot take it again.
        let ttl = Duration::from_millis(u64::try_from(every_ms).unwrap_or(u64::MAX)).max(Duration::from_secs(60));
        match coord
            .lease_acquire(&format!("backup:{slot}"), &self.instance, 1, ttl)
            .await
        {
            Ok(mine) => mine,
            Err(e) => {
                self.metrics.backup_runs.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "scheduled backup: the coordination store does not answer");
                false
            }
        }
    }

    /// Writes one backup now and prunes the old ones; returns the new file's path.
    pub async fn once(&self) -> Result<PathBuf, BackupError> {
        let passphrase = self
            .config
            .passphrase(&|k| std::env::var(k).ok())
            .map_err(|e| BackupError::Passphrase(format!("backup.passphrase_file: {e}")))?;
        let bytes = super::export(self.store.as_ref(), &self.secrets, &passphrase).await?;
        let dir = self.config.dir().to_path_buf();
        let keep = self.config.keep;
        let name = super::file_name(chrono::Utc::now());
        tokio::task::spawn_blocking(move || {
            crate::private_fs::create_dir(&dir)?;
            let path = dir.join(name);
            crate::private_fs::write_atomically(&path, &bytes)?;
            prune(&dir, keep)?;
            Ok::<_, std::io::Error>(path)
        })
        .await
        .map_err(|e| BackupError::Format(format!("writing the backup failed: {e}")))?
        .map_err(|e| BackupError::Format(format!("cannot write the backup: {e}")))
    }
}

/// Deletes all but the newest `keep` backup files of `dir` (by name: they sort by time).
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".json"))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    for old in names.iter().skip(keep) {
        std::fs::remove_file(dir.join(old))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_backups_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "claude-relay-backup-20260101T000000Z.json",
            "claude-relay-backup-20260102T000000Z.json",
            "claude-relay-backup-20260103T000000Z.json",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "claude-relay-backup-20260102T000000Z.json",
                "claude-relay-backup-20260103T000000Z.json",
                "notes.txt"
            ]
        );
    }
}
