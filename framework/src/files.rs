//! Files made once and never replaced (a key, a secret): whole or not at all; and the text
//! files users write, read with their path in the error.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes the file at `path` holding `contents` (mode 0600) unless it exists: `true` when made
/// now, `false` when it existed (another process made it: read theirs). The file appears whole
/// or not at all: `contents` are written and synced to a file of this process beside it, then
/// hard-linked to `path`, which fails when `path` exists (a link never replaces a file, unlike a
/// rename, which would swap a key another process may already use). Created in place and then
/// written, a process starting at the same moment read it empty: seen on a fresh machine, where
/// the tests' processes all made the laptop's PII root key at once.
pub fn make_once(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name goes whatever happened; `path` keeps the contents if it was linked.
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name survives a power loss.
            std::fs::File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A text file a user wrote (a model, a macro, a suite), its path in the error: "stream did not
/// contain valid UTF-8" named only the folder it was in.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::InvalidData {
            "is not UTF-8 text (save it as UTF-8)".to_owned()
        } else {
            e.to_string()
        };
        std::io::Error::new(e.kind(), format!("{}: {what}", path.display()))
    })
}
