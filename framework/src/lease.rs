//! Leases: one writer per table at a time on a local lake, and one producer per embedded topic.
//!
//! A lease is an advisory lock (`flock`) on a file, held for a whole step that reads a table's
//! state and commits to it (silver's batch: read the offsets, quarantine, merge, rebuild the
//! `latest_by` tables; a gold build). The operating system drops the lock when the process ends,
//! however it ends, SIGKILL included, so a crashed writer never blocks the next one and nothing
//! has to expire. A second writer waits for the lease (at most `FRAMEWORK_LEASE_TIMEOUT_S`,
//! default 600 s), then finds the first one's work committed and does only what is left.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A held lease; dropping it releases the lock.
#[derive(Debug)]
pub struct Lease {
    _file: Option<File>,
}

impl Lease {
    /// No lock (an object-store lake, where Delta's optimistic concurrency is the guard).
    pub const fn none() -> Self {
        Self { _file: None }
    }
}

/// Why a lease could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "still held by another process after {waited_s} s ({path}: {holder})\n  hint: another `framework` process is writing it; wait for it to finish, or stop it (a stopped process releases the lease at once); FRAMEWORK_LEASE_TIMEOUT_S sets how long to wait"
    )]
    Busy {
        path: PathBuf,
        holder: String,
        waited_s: u64,
    },
}

/// How long to wait for a lease.
pub fn timeout() -> Duration {
    let seconds = std::env::var("FRAMEWORK_LEASE_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(seconds)
}

/// Takes the lease on `path` now, or returns `None` when another process holds it.
fn try_take(path: &Path) -> Result<Option<Lease>, LeaseError> {
    let io = |source| LeaseError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the error message of a process that waits in vain.
            let _ = file.set_len(0);
            let _ = write!(file, "pid {}", std::process::id());
            Ok(Some(Lease { _file: Some(file) }))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

fn busy(path: &Path, waited: Duration) -> LeaseError {
    LeaseError::Busy {
        path: path.to_owned(),
        holder: std::fs::read_to_string(path).unwrap_or_default(),
        waited_s: waited.as_secs(),
    }
}

/// Waits for the lease on `path` (blocking), at most `limit`.
pub fn take(path: &Path, limit: Duration) -> Result<Lease, LeaseError> {
    let started = Instant::now();
    loop {
        if let Some(lease) = try_take(path)? {
            return Ok(lease);
        }
        if started.elapsed() >= limit {
            return Err(busy(path, limit));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`take`] without blocking the async runtime: the wait runs on tokio's blocking pool.
pub async fn take_async(path: &Path, limit: Duration) -> Result<Lease, LeaseError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || take(&path, limit))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.lock");
        let first = take(&path, Duration::from_secs(1)).unwrap();
        let waited = take(&path, Duration::from_millis(200)).unwrap_err();
        let text = waited.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("b.lock"), "{text}");
        drop(first);
        take(&path, Duration::from_millis(200)).unwrap();
    }
}
