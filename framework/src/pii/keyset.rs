//! Keysets: the data keys of one environment, per PII domain, each wrapped under root keys.
//!
//! A keyset is a JSON file (default `keys/<environment>.keyset.json`, or `FRAMEWORK_KEYSET`)
//! that holds no key in clear: every data key is stored once per root key that wraps it
//! (AES-256-GCM, the associated data naming the environment, domain and key id). Any one root key
//! unlocks a data key, so a keyset wrapped under the root keys of two environments or clouds
//! reads in both, each holding only its own root key. Root keys come from `FRAMEWORK_ROOT_KEY`
//! (base64 of 32 bytes; several separated by commas) or `FRAMEWORK_ROOT_KEY_FILE` (one per
//! line); a root key is named by its fingerprint, never shown. On a laptop (environment `dev`,
//! neither variable set) a root key is made once under `~/.config/framework/root-keys/dev.key`
//! (mode 0600, outside the repository) and the keyset is made on first use. A cloud KMS plugs in
//! as another [`RootKey`] source: it wraps and unwraps the same data keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::cipher::{DATA_KEY_BYTES, DataKey, DomainKeys, Keyring};

const FORMAT: &str = "framework-keyset/1";

/// Why a keyset cannot be used. Messages name files, environments, domains, key ids and root-key
/// fingerprints, never key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a keyset: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path}: the keyset is for environment `{found}`, this run is `{environment}`\n  hint: set FRAMEWORK_KEYSET to the `{environment}` keyset, or FRAMEWORK_ENV to `{found}`"
    )]
    Environment {
        path: PathBuf,
        found: String,
        environment: String,
    },
    #[error(
        "no root key for environment `{environment}`\n  hint: set FRAMEWORK_ROOT_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) or FRAMEWORK_ROOT_KEY_FILE; only `dev` makes one by itself"
    )]
    NoRootKey { environment: String },
    #[error(
        "{source_name}: not base64 of 32 bytes{line}\n  hint: make one with `openssl rand -base64 32`"
    )]
    BadRootKey { source_name: String, line: String },
    #[error(
        "{path}: no keyset for environment `{environment}`, and the idcards declare PII (domains: {domains})\n  hint: `framework keys create --env {environment}` makes it"
    )]
    Missing {
        path: PathBuf,
        environment: String,
        domains: String,
    },
    #[error(
        "{path}: no data key for PII domain `{domain}` (declared by {used_by})\n  hint: `framework keys create --env {environment}` adds the keys of new domains"
    )]
    MissingDomain {
        path: PathBuf,
        environment: String,
        domain: String,
        used_by: String,
    },
    #[error(
        "{path}: data key(s) {keys} are wrapped under root key {fingerprint} only; removing it would lose them\n  hint: `framework keys rewrap --add-root-file FILE` wraps them under another root key first"
    )]
    WouldLose {
        path: PathBuf,
        fingerprint: String,
        keys: String,
    },
    #[error("{path}: no domain `{domain}` to rotate (the keyset has: {known})")]
    UnknownDomain {
        path: PathBuf,
        domain: String,
        known: String,
    },
    #[error(
        "{path}: data key {key_id} of PII domain `{domain}` is wrapped under root key(s) {wrapped_under}; this run holds {held}, and none of them unwraps it\n  hint: set FRAMEWORK_ROOT_KEY or FRAMEWORK_ROOT_KEY_FILE to a root key of this keyset; `framework keys rewrap` adds a root key to a keyset"
    )]
    Locked {
        path: PathBuf,
        domain: String,
        key_id: u32,
        wrapped_under: String,
        held: String,
    },
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A root key: wraps and unwraps data keys. Named by its fingerprint.
pub struct RootKey {
    fingerprint: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({})", self.fingerprint)
    }
}

impl RootKey {
    /// A root key from its base64 text; `source_name` names where it came from in errors.
    pub fn parse(text: &str, source_name: &str, line: Option<usize>) -> Result<Self> {
        let bad = || Error::BadRootKey {
            source_name: source_name.to_owned(),
            line: line.map(|l| format!(" (line {l})")).unwrap_or_default(),
        };
        let bytes = BASE64.decode(text.trim()).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let mut digest = sha2::Sha256::new();
        digest.update(b"framework-root-key/1");
        digest.update(bytes);
        let fingerprint = hex::encode(&digest.finalize()[..8]);
        Self {
            fingerprint,
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A new random root key and its base64 text.
    pub fn generate() -> (Self, String) {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the OS gives random bytes");
        (Self::from_bytes(&bytes), BASE64.encode(bytes))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Where a run finds its keyset and root keys.
#[derive(Debug, Clone)]
pub struct KeysetOptions {
    pub environment: String,
    pub path: PathBuf,
}

impl KeysetOptions {
    /// `FRAMEWORK_ENV` (default `dev`) and `FRAMEWORK_KEYSET` (default
    /// `keys/<environment>.keyset.json` under `project`).
    pub fn from_env(project: &Path) -> Self {
        let environment = std::env::var("FRAMEWORK_ENV")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "dev".to_owned());
        Self::for_environment(project, &environment)
    }

    /// `environment`'s keyset: `FRAMEWORK_KEYSET`, else `keys/<environment>.keyset.json` under
    /// `project`.
    pub fn for_environment(project: &Path, environment: &str) -> Self {
        let path = std::env::var_os("FRAMEWORK_KEYSET").map_or_else(
            || {
                project
                    .join("keys")
                    .join(format!("{environment}.keyset.json"))
            },
            PathBuf::from,
        );
        Self {
            environment: environment.to_owned(),
            path,
        }
    }

    fn is_dev(&self) -> bool {
        self.environment == "dev"
    }
}

/// The root keys of this process: `FRAMEWORK_ROOT_KEY`, `FRAMEWORK_ROOT_KEY_FILE`, or on `dev`
/// the laptop's own (made when `make_dev` and missing).
pub fn root_keys(options: &KeysetOptions, make_dev: bool) -> Result<Vec<RootKey>> {
    let mut keys = Vec::new();
    if let Ok(text) = std::env::var("FRAMEWORK_ROOT_KEY") {
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            keys.push(RootKey::parse(part, "FRAMEWORK_ROOT_KEY", None)?);
        }
    }
    if let Some(path) = std::env::var_os("FRAMEWORK_ROOT_KEY_FILE") {
        keys.extend(root_keys_from_file(Path::new(&path))?);
    }
    if keys.is_empty()
        && options.is_dev()
        && let Some(path) = dev_root_path()
    {
        if !path.exists() && make_dev {
            make_root_file(&path)?;
        }
        if path.exists() {
            keys.extend(root_keys_from_file(&path)?);
        }
    }
    if keys.is_empty() {
        return Err(Error::NoRootKey {
            environment: options.environment.clone(),
        });
    }
    Ok(keys)
}

fn dev_root_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("framework/root-keys/dev.key"))
}

pub fn root_keys_from_file(path: &Path) -> Result<Vec<RootKey>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| RootKey::parse(l, &path.display().to_string(), Some(i + 1)))
        .collect()
}

/// Writes a new root key to `path` (0600, whole or not at all: [`crate::files::make_once`]),
/// unless another process just did: then its key is returned.
pub fn make_root_file(path: &Path) -> Result<RootKey> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let (key, text) = RootKey::generate();
    if crate::files::make_once(path, format!("{text}\n").as_bytes()).map_err(io)? {
        tracing::info!(path = %path.display(), fingerprint = key.fingerprint(), "made a root key");
        return Ok(key);
    }
    // Another process made it first: use theirs.
    root_keys_from_file(path)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::BadRootKey {
            source_name: path.display().to_string(),
            line: String::new(),
        })
}

/// The keyset file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyset {
    pub format: String,
    pub environment: String,
    pub domains: BTreeMap<String, Domain>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    /// The key id new values are encrypted with.
    pub primary: u32,
    pub keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub id: u32,
    pub created: String,
    /// The data key wrapped under each root key that can unlock it.
    pub wrapped: Vec<Wrapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wrapping {
    /// Fingerprint of the root key.
    pub root: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl Keyset {
    pub fn new(environment: &str) -> Self {
        Self {
            format: FORMAT.to_owned(),
            environment: environment.to_owned(),
            domains: BTreeMap::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let keyset: Self = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if keyset.format != FORMAT {
            return Err(Error::Parse {
                path: path.to_owned(),
                message: format!("format `{}`, expected `{FORMAT}`", keyset.format),
            });
        }
        Ok(Some(keyset))
    }

    /// Writes the keyset atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).expect("a keyset serializes");
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn aad(&self, domain: &str, id: u32) -> Vec<u8> {
        format!("{FORMAT}|{}|{domain}|{id}", self.environment).into_bytes()
    }

    /// Adds a new data key to `domain` (made if new), wrapped under every key of `roots`, and
    /// makes it the domain's primary; returns its id.
    pub fn add_key(&mut self, domain: &str, roots: &[RootKey]) -> u32 {
        let mut material = [0u8; DATA_KEY_BYTES];
        OsRng
            .try_fill_bytes(&mut material)
            .expect("the OS gives random bytes");
        let taken: Vec<u32> = self
            .domains
            .values()
            .flat_map(|d| d.keys.iter().map(|k| k.id))
            .collect();
        let id = loop {
            let id = OsRng.try_next_u32().expect("the OS gives random bytes");
            if id != 0 && !taken.contains(&id) {
                break id;
            }
        };
        let aad = self.aad(domain, id);
        let wrapped = roots
            .iter()
            .map(|root| wrap(root, &material, &aad))
            .collect();
        let entry = self
            .domains
            .entry(domain.to_owned())
            .or_insert_with(|| Domain {
                primary: id,
                keys: Vec::new(),
            });
        entry.keys.push(WrappedKey {
            id,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            wrapped,
        });
        entry.primary = id;
        id
    }

    /// Every data key, unwrapped with any of `roots`.
    pub fn unlock(&self, path: &Path, roots: &[RootKey]) -> Result<Keyring> {
        let mut keyring = Keyring {
            environment: self.environment.clone(),
            subjects: super::subjects::SubjectKeys::beside(path),
            ..Keyring::default()
        };
        for (name, domain) in &self.domains {
            let mut keys = std::collections::HashMap::new();
            for key in &domain.keys {
                let material = self.unwrap_key(path, name, key, roots)?;
                keys.insert(key.id, DataKey::new(key.id, &material));
            }
            keyring.domains.insert(
                name.clone(),
                DomainKeys {
                    primary: domain.primary,
                    keys,
                },
            );
        }
        Ok(keyring)
    }

    fn unwrap_key(
        &self,
        path: &Path,
        domain: &str,
        key: &WrappedKey,
        roots: &[RootKey],
    ) -> Result<[u8; DATA_KEY_BYTES]> {
        let aad = self.aad(domain, key.id);
        for wrapping in &key.wrapped {
            for root in roots.iter().filter(|r| r.fingerprint == wrapping.root) {
                if let Some(material) = unwrap(root, wrapping, &aad) {
                    return Ok(material);
                }
            }
        }
        Err(Error::Locked {
            path: path.to_owned(),
            domain: domain.to_owned(),
            key_id: key.id,
            wrapped_under: key
                .wrapped
                .iter()
                .map(|w| w.root.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            held: roots
                .iter()
                .map(|r| r.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Wraps every data key under `new_root` too (unwrapping each with one of `roots`).
    pub fn rewrap(&mut self, path: &Path, roots: &[RootKey], new_root: &RootKey) -> Result<usize> {
        let mut added = 0;
        let names: Vec<String> = self.domains.keys().cloned().collect();
        for name in names {
            for i in 0..self.domains[&name].keys.len() {
                let key = self.domains[&name].keys[i].clone();
                if key.wrapped.iter().any(|w| w.root == new_root.fingerprint) {
                    continue;
                }
                let material = self.unwrap_key(path, &name, &key, roots)?;
                let wrapping = wrap(new_root, &material, &self.aad(&name, key.id));
                self.domains.get_mut(&name).expect("the domain exists").keys[i]
                    .wrapped
                    .push(wrapping);
                added += 1;
            }
        }
        Ok(added)
    }

    /// Drops the wrappings under the root key with `fingerprint` (a key still wrapped under
    /// another root stays readable); returns how many went.
    pub fn drop_root(&mut self, fingerprint: &str) -> usize {
        let mut dropped = 0;
        for domain in self.domains.values_mut() {
            for key in &mut domain.keys {
                let before = key.wrapped.len();
                key.wrapped.retain(|w| w.root != fingerprint);
                dropped += before - key.wrapped.len();
            }
        }
        dropped
    }
}

fn wrap(root: &RootKey, material: &[u8; DATA_KEY_BYTES], aad: &[u8]) -> Wrapping {
    let mut nonce = [0u8; 12];
    OsRng
        .try_fill_bytes(&mut nonce)
        .expect("the OS gives random bytes");
    let sealed = root
        .cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: material, aad })
        .expect("AES-GCM encrypts any 96 bytes");
    Wrapping {
        root: root.fingerprint.clone(),
        nonce: BASE64.encode(nonce),
        ciphertext: BASE64.encode(sealed),
    }
}

fn unwrap(root: &RootKey, wrapping: &Wrapping, aad: &[u8]) -> Option<[u8; DATA_KEY_BYTES]> {
    let nonce = BASE64.decode(&wrapping.nonce).ok()?;
    if nonce.len() != 12 {
        return None;
    }
    let sealed = BASE64.decode(&wrapping.ciphertext).ok()?;
    let material = root
        .cipher
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &sealed, aad })
        .ok()?;
    material.try_into().ok()
}

/// The keyring for a run whose idcards use `domains` (domain -> the tables and columns that
/// declare it). On `dev`, a missing keyset or domain is made (under a lock, so concurrent runs
/// agree on one key); elsewhere it is an error saying which command makes it.
pub fn open(options: &KeysetOptions, domains: &BTreeMap<String, Vec<String>>) -> Result<Keyring> {
    if domains.is_empty() {
        return Ok(Keyring {
            environment: options.environment.clone(),
            ..Keyring::default()
        });
    }
    let roots = root_keys(options, true)?;
    let loaded = Keyset::load(&options.path)?;
    let complete = |k: &Keyset| domains.keys().all(|d| k.domains.contains_key(d));
    let keyset = match loaded {
        Some(keyset) if complete(&keyset) => keyset,
        _ if options.is_dev() => ensure(options, domains.keys(), &roots)?.0,
        None => {
            return Err(Error::Missing {
                path: options.path.clone(),
                environment: options.environment.clone(),
                domains: domains.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        Some(keyset) => {
            let (domain, used_by) = domains
                .iter()
                .find(|(d, _)| !keyset.domains.contains_key(*d))
                .expect("the keyset is not complete");
            return Err(Error::MissingDomain {
                path: options.path.clone(),
                environment: options.environment.clone(),
                domain: domain.clone(),
                used_by: used_by.join(", "),
            });
        }
    };
    check_environment(options, &keyset)?;
    keyset.unlock(&options.path, &roots)
}

fn check_environment(options: &KeysetOptions, keyset: &Keyset) -> Result<()> {
    if keyset.environment != options.environment {
        return Err(Error::Environment {
            path: options.path.clone(),
            found: keyset.environment.clone(),
            environment: options.environment.clone(),
        });
    }
    Ok(())
}

/// Makes the keyset if missing and adds a key to each of `domains` it lacks, under the keyset's
/// lock; returns the keyset and the domains added.
pub fn ensure<'a>(
    options: &KeysetOptions,
    domains: impl IntoIterator<Item = &'a String>,
    roots: &[RootKey],
) -> Result<(Keyset, Vec<String>)> {
    let _lock = crate::lease::take(
        &options.path.with_extension("lock"),
        crate::lease::timeout(),
    )?;
    let mut keyset =
        Keyset::load(&options.path)?.unwrap_or_else(|| Keyset::new(&options.environment));
    check_environment(options, &keyset)?;
    let mut added = Vec::new();
    for domain in domains {
        if !keyset.domains.contains_key(domain) {
            keyset.add_key(domain, roots);
            added.push(domain.clone());
        }
    }
    if !added.is_empty() || !options.path.exists() {
        keyset.save(&options.path)?;
        tracing::info!(path = %options.path.display(), domains = ?added, "keyset: made data keys");
    }
    Ok((keyset, added))
}

/// Runs `change` on the keyset under its lock and saves it.
pub fn update<T>(
    options: &KeysetOptions,
    change: impl FnOnce(&mut Keyset) -> Result<T>,
) -> Result<T> {
    let _lock = crate::lease::take(
        &options.path.with_extension("lock"),
        crate::lease::timeout(),
    )?;
    let mut keyset = Keyset::load(&options.path)?.ok_or_else(|| Error::Missing {
        path: options.path.clone(),
        environment: options.environment.clone(),
        domains: "none yet".to_owned(),
    })?;
    check_environment(options, &keyset)?;
    let out = change(&mut keyset)?;
    keyset.save(&options.path)?;
    Ok(out)
}
