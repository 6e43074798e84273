//! Per-subject keys for crypto-shredding: a `pii:` entry with `subject: <column>` encrypts each
//! subject's values (e.g. a customer's contacts) with a key of that subject's own, so erasing
//! the key makes every copy of those values unreadable, in every table and every Delta version.
//!
//! A domain's subject keys live in `<keyset>.subjects/<domain>.jsonl` beside the keyset, one
//! line per key: `{"ref", "key_id", "wrapped"}`. `ref` (16 bytes, hex) is a keyed BLAKE3 digest
//! of the subject under the domain's data key `key_id` (no subject id is stored in clear);
//! `wrapped` is the subject key sealed by that data key (AES-256-GCM, the domain and the ref as
//! associated data). A key line is written before any value it encrypts can leave the process
//! and synced before the values are sent ([`SubjectKeys::sync`]), so a crash never leaves a value
//! whose key is lost. Two processes that meet a new subject at once each write a key: both lines
//! stay, and a value decrypts with whichever key made it. `framework keys forget` rewrites the
//! file without the subject's lines (under the file's lock; writers append under it too and
//! reopen the file when it was replaced).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use super::cipher::{CipherError, DataKey, DomainKeys, open, seal_into};

/// Bytes of a subject reference in a value's wire format.
pub const REF_BYTES: usize = 16;

/// A subject reference: which subject key encrypted a value.
pub type SubjectRef = [u8; REF_BYTES];

/// One line of a domain's subject key file.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(rename = "ref")]
    subject_ref: String,
    key_id: u32,
    wrapped: String,
}

/// The subject keys of one domain, as loaded from its file.
#[derive(Default)]
struct Loaded {
    keys: HashMap<SubjectRef, Vec<Aes256Gcm>>,
    /// The file as opened for appending, with its identity (to notice a rewrite by `forget`).
    file: Option<(File, FileId)>,
    /// The file's length when loaded (a reader looks again when it grew).
    len: u64,
    /// Lines written since the last sync.
    dirty: bool,
    /// The file was made by this process and its folder not synced yet.
    created: bool,
}

/// Device and inode of a file.
type FileId = (u64, u64);

impl Loaded {
    /// The identity of the file these keys were loaded from (`None`: there was none).
    fn id(&self) -> Option<FileId> {
        self.file.as_ref().map(|(_, id)| *id)
    }

    /// A key of `subject_ref`, when one is loaded.
    fn first(&self, subject_ref: &SubjectRef) -> Option<Aes256Gcm> {
        self.keys.get(subject_ref)?.first().cloned()
    }

    /// Loads the keys again from the file at `path`, keeping what this process still owes it
    /// (a sync of lines written, of the folder of a file it made).
    fn reload(&mut self, path: &Path, domain: &str, keys: &DomainKeys) -> std::io::Result<()> {
        let (dirty, created) = (self.dirty, self.created);
        *self = load(path, domain, keys)?;
        self.dirty |= dirty;
        self.created |= created;
        Ok(())
    }
}

/// The subject keys of an environment: loaded per domain on first use.
#[derive(Default)]
pub struct SubjectKeys {
    /// `<keyset>.subjects/`; `None` for a keyring without a keyset (no subject keys).
    dir: Option<PathBuf>,
    domains: Mutex<HashMap<String, Loaded>>,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectKeys({:?})", self.dir)
    }
}

/// Why the subject key store failed (never carries key material or a subject id).
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    #[error("no subject key store for PII domain `{domain}` (the keyring has no keyset)")]
    NoStore { domain: String },
    #[error("subject keys of PII domain `{domain}` ({path}): {source}")]
    Io {
        domain: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cipher(#[from] CipherError),
}

impl SubjectKeys {
    /// The store beside the keyset at `keyset`.
    pub fn beside(keyset: &Path) -> Self {
        Self {
            dir: Some(keyset.with_extension("subjects")),
            domains: Mutex::default(),
        }
    }

    fn path(&self, domain: &str) -> Result<PathBuf, SubjectError> {
        let dir = self.dir.as_ref().ok_or_else(|| SubjectError::NoStore {
            domain: domain.to_owned(),
        })?;
        Ok(dir.join(format!("{domain}.jsonl")))
    }

    /// The reference and key of `subject` in `domain`, made (and written to the file, unsynced)
    /// when the subject has none.
    pub fn key_for(
        &self,
        domain: &str,
        keys: &DomainKeys,
        subject: &str,
    ) -> Result<(SubjectRef, Aes256Gcm), SubjectError> {
        let primary = keys
            .keys
            .get(&keys.primary)
            .ok_or_else(|| CipherError::UnknownKey {
                domain: domain.to_owned(),
                key_id: keys.primary,
            })?;
        let subject_ref = reference(primary, domain, subject);
        let path = self.path(domain)?;
        let io = io_error(domain, &path);
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = domains.entry(domain.to_owned()).or_default();
        // A `forget` since the last look replaced the file: what was loaded may be erased.
        let now = file_meta(&path).map_err(io)?.map(|(id, _)| id);
        if loaded.file.is_none() || loaded.id() != now {
            loaded.reload(&path, domain, keys).map_err(io)?;
        }
        if let Some(key) = loaded.first(&subject_ref) {
            return Ok((subject_ref, key));
        }
        let mut material = [0u8; 32];
        rand::rng().fill_bytes(&mut material);
        let line = Line {
            subject_ref: hex::encode(subject_ref),
            key_id: primary.id(),
            wrapped: BASE64.encode(wrap(primary, domain, &subject_ref, &material)?),
        };
        let mut text = serde_json::to_string(&line).expect("a line serialises");
        text.push('\n');
        // Written under the file's lock, to the file at the path (a `forget` may have just
        // replaced it: then it is loaded again, and the subject's key looked up again).
        loop {
            if loaded.file.is_none() {
                let made = make_file(&path).map_err(io)?;
                loaded.reload(&path, domain, keys).map_err(io)?;
                loaded.created |= made;
            }
            let (file, id) = loaded.file.as_ref().expect("opened above");
            file.lock().map_err(io)?;
            if file_meta(&path).map_err(io)?.map(|(id, _)| id) != Some(*id) {
                let _ = file.unlock();
                loaded.reload(&path, domain, keys).map_err(io)?;
                if let Some(key) = loaded.first(&subject_ref) {
                    return Ok((subject_ref, key));
                }
                continue;
            }
            let written = (&*file).write_all(text.as_bytes());
            let _ = file.unlock();
            written.map_err(io)?;
            break;
        }
        let key = Aes256Gcm::new_from_slice(&material).expect("32 bytes make an AES-256 key");
        loaded.dirty = true;
        loaded
            .keys
            .entry(subject_ref)
            .or_default()
            .push(key.clone());
        Ok((subject_ref, key))
    }

    /// The keys that may have encrypted a value of `domain` with `subject_ref` (empty when the
    /// subject was forgotten).
    pub fn keys_of(
        &self,
        domain: &str,
        keys: &DomainKeys,
        subject_ref: &SubjectRef,
    ) -> Result<Vec<Aes256Gcm>, SubjectError> {
        let path = self.path(domain)?;
        let io = io_error(domain, &path);
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = domains.entry(domain.to_owned()).or_default();
        // Loaded again when another process replaced the file (a `forget`) or, for a key not
        // loaded yet, appended to it (a writer's new subject).
        let now = file_meta(&path).map_err(io)?;
        let grown = now.is_some_and(|(_, len)| len > loaded.len);
        let stale = loaded.id() != now.map(|(id, _)| id)
            || (!loaded.keys.contains_key(subject_ref) && grown);
        if stale {
            loaded.reload(&path, domain, keys).map_err(io)?;
        }
        Ok(loaded.keys.get(subject_ref).cloned().unwrap_or_default())
    }

    /// Syncs every key line written since the last sync: call before the values they encrypt
    /// are sent.
    pub fn sync(&self) -> Result<(), SubjectError> {
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        for (domain, loaded) in domains.iter_mut().filter(|(_, l)| l.dirty) {
            let path = self.path(domain)?;
            let io = io_error(domain, &path);
            if let Some((file, _)) = &loaded.file {
                file.sync_data().map_err(io)?;
            }
            if loaded.created
                && let Some(dir) = path.parent()
            {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                loaded.created = false;
            }
            loaded.dirty = false;
        }
        Ok(())
    }

    /// Erases every key of `subject` in `domain` (under any of its data keys); returns how many.
    pub fn forget(
        &self,
        domain: &str,
        keys: &DomainKeys,
        subject: &str,
    ) -> Result<usize, SubjectError> {
        let path = self.path(domain)?;
        let io = io_error(domain, &path);
        let refs: Vec<String> = keys
            .keys
            .values()
            .map(|key| hex::encode(reference(key, domain, subject)))
            .collect();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        file.lock().map_err(io)?;
        let mut kept = String::new();
        let mut erased = 0;
        for line in BufReader::new(&file).lines() {
            let line = line.map_err(io)?;
            let ours =
                serde_json::from_str::<Line>(&line).is_ok_and(|l| refs.contains(&l.subject_ref));
            if ours {
                erased += 1;
            } else if !line.trim().is_empty() {
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        if erased > 0 {
            let temporary = path.with_extension("jsonl.tmp");
            let mut out = File::create(&temporary).map_err(io)?;
            out.write_all(kept.as_bytes()).map_err(io)?;
            out.sync_all().map_err(io)?;
            std::fs::rename(&temporary, &path).map_err(io)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let _ = file.unlock();
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(domain);
        Ok(erased)
    }
}

/// An I/O error on the key file of `domain` at `path`.
fn io_error<'a>(
    domain: &'a str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> SubjectError + Copy + 'a {
    move |source| SubjectError::Io {
        domain: domain.to_owned(),
        path: path.to_owned(),
        source,
    }
}

/// The subject's reference under data key `key`.
fn reference(key: &DataKey, domain: &str, subject: &str) -> SubjectRef {
    let mut hasher = blake3::Hasher::new_keyed(key.subject_secret());
    hasher.update(domain.as_bytes());
    hasher.update(&[0]);
    hasher.update(subject.as_bytes());
    let mut out = [0u8; REF_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..REF_BYTES]);
    out
}

fn aad(domain: &str, subject_ref: &SubjectRef) -> Vec<u8> {
    let mut aad = b"framework subject key\0".to_vec();
    aad.extend_from_slice(domain.as_bytes());
    aad.push(0);
    aad.extend_from_slice(subject_ref);
    aad
}

fn wrap(
    key: &DataKey,
    domain: &str,
    subject_ref: &SubjectRef,
    material: &[u8; 32],
) -> Result<Vec<u8>, CipherError> {
    let mut out = Vec::new();
    seal_into(key.gcm(), &aad(domain, subject_ref), material, &mut out).ok_or_else(|| {
        CipherError::Failed {
            domain: domain.to_owned(),
            key_id: key.id(),
        }
    })?;
    Ok(out)
}

/// A line's subject key, when one of `keys` unwraps it.
fn unwrap(line: &Line, domain: &str, keys: &DomainKeys) -> Option<(SubjectRef, Aes256Gcm)> {
    let mut subject_ref: SubjectRef = [0; REF_BYTES];
    hex::decode_to_slice(&line.subject_ref, &mut subject_ref).ok()?;
    let wrapped = BASE64.decode(&line.wrapped).ok()?;
    let key = keys.keys.get(&line.key_id)?;
    let material = open(key.gcm(), &aad(domain, &subject_ref), &wrapped)?;
    Some((subject_ref, Aes256Gcm::new_from_slice(&material).ok()?))
}

/// The identity and length of a file's metadata.
fn meta_of(m: &std::fs::Metadata) -> (FileId, u64) {
    use std::os::unix::fs::MetadataExt as _;
    ((m.dev(), m.ino()), m.len())
}

/// The identity and length of the file at `path`; `None` when there is none.
fn file_meta(path: &Path) -> std::io::Result<Option<(FileId, u64)>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(meta_of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The keys in the file at `path` (none when it does not exist), and the file opened for
/// appending. A line that does not parse or unwrap (a line cut by a power loss before its
/// sync, whose values were never sent) is skipped.
fn load(path: &Path, domain: &str, keys: &DomainKeys) -> std::io::Result<Loaded> {
    let mut loaded = Loaded::default();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
        Err(e) => return Err(e),
    };
    let (id, len) = meta_of(&file.metadata()?);
    loaded.len = len;
    let mut skipped = 0;
    for line in BufReader::new(&file).take(len).lines() {
        let line = line?;
        match serde_json::from_str::<Line>(&line)
            .ok()
            .and_then(|l| unwrap(&l, domain, keys))
        {
            Some((subject_ref, key)) => loaded.keys.entry(subject_ref).or_default().push(key),
            None if line.trim().is_empty() => {}
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            domain,
            path = %path.display(),
            skipped,
            "subject keys: lines that do not unwrap with this keyset were skipped"
        );
    }
    loaded.file = Some((file, id));
    Ok(loaded)
}

/// Makes the (empty) file at `path`, mode 0600, unless it exists; whether it made it.
fn make_file(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}
