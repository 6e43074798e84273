//! The two encryption modes and the wire format of an encrypted value.
//!
//! An encrypted value is the base64 text (standard alphabet, no padding) of
//! `[mode: 1 byte][data key id: 4 bytes, big endian][ciphertext]`, where the mode byte is `1`
//! for deterministic (AES-256-SIV, RFC 5297: the synthetic IV, then the ciphertext) and `2` for
//! randomized (AES-256-GCM: a random 96-bit nonce, then the ciphertext and its tag). The key
//! domain's name is the associated data of both, so a value moved to a column of another domain
//! does not decrypt. The id names the data key, so old values still decrypt after a rotation.
//!
//! Mode byte `3` is randomized under a subject's own key (crypto-shredding, see
//! [`super::subjects`]): `[3][data key id][subject ref: 16 bytes][nonce][ciphertext and tag]`.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_siv::siv::Aes256Siv;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use rand::RngCore as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a PII column is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// AES-256-SIV: equal plaintexts give equal ciphertexts (keys, joins, dedup and MERGE still
    /// work); it leaks equality and frequency, so only for columns that need it.
    Deterministic,
    /// AES-256-GCM with a random nonce: equal plaintexts give different ciphertexts.
    Randomized,
}

impl PiiMode {
    fn tag(self) -> u8 {
        match self {
            Self::Deterministic => 1,
            Self::Randomized => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Randomized => "randomized",
        }
    }
}

/// Mode byte of a value encrypted under its subject's key.
const SUBJECT_MODE: u8 = 3;

/// Bytes of a data key: 64 for AES-256-SIV (two AES-256 keys), then 32 for AES-256-GCM.
pub const DATA_KEY_BYTES: usize = 96;
const HEADER: usize = 5;
const SUBJECT_REF: usize = super::subjects::REF_BYTES;
const NONCE: usize = 12;

/// Why a value does not encrypt or decrypt. Never carries key material or the value.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("no data key for PII domain `{domain}` in the keyset")]
    UnknownDomain { domain: String },
    #[error(
        "a value of PII domain `{domain}` is not an encrypted value (not base64 of this wire format)"
    )]
    NotCiphertext { domain: String },
    #[error(
        "a value of PII domain `{domain}` was encrypted with data key {key_id}, which the keyset does not hold"
    )]
    UnknownKey { domain: String, key_id: u32 },
    #[error(
        "a value of PII domain `{domain}` does not decrypt with data key {key_id} (tampered, or from another domain)"
    )]
    Failed { domain: String, key_id: u32 },
    #[error(
        "a value of PII domain `{domain}` belongs to a subject whose key was erased (`framework keys forget`)"
    )]
    Forgotten { domain: String },
    #[error("the subject keys of PII domain `{domain}`: {detail}")]
    SubjectStore { domain: String, detail: String },
}

/// One unwrapped data key.
pub struct DataKey {
    id: u32,
    siv: [u8; 64],
    gcm: Aes256Gcm,
    /// Keys the digests that name subjects (derived: it never leaves the process either).
    subject_secret: [u8; 32],
}

impl DataKey {
    pub fn new(id: u32, material: &[u8; DATA_KEY_BYTES]) -> Self {
        let mut siv = [0u8; 64];
        siv.copy_from_slice(&material[..64]);
        let gcm = Aes256Gcm::new_from_slice(&material[64..]).expect("32 bytes make an AES-256 key");
        let subject_secret = blake3::derive_key("olist-lake 2026-12 subject reference", material);
        Self {
            id,
            siv,
            gcm,
            subject_secret,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub(super) fn gcm(&self) -> &Aes256Gcm {
        &self.gcm
    }

    pub(super) fn subject_secret(&self) -> &[u8; 32] {
        &self.subject_secret
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

/// The data keys of one domain: the primary encrypts, any decrypts.
#[derive(Debug)]
pub struct DomainKeys {
    pub primary: u32,
    pub keys: HashMap<u32, DataKey>,
}

/// The unwrapped data keys of a run, per domain.
#[derive(Debug, Default)]
pub struct Keyring {
    pub environment: String,
    pub domains: HashMap<String, DomainKeys>,
    /// Per-subject keys (`pii:` entries with a `subject:`), beside the keyset.
    pub subjects: super::subjects::SubjectKeys,
}

impl Keyring {
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The data key id new values of `domain` are encrypted with.
    pub fn primary(&self, domain: &str) -> Option<u32> {
        self.domains.get(domain).map(|d| d.primary)
    }

    /// The data keys of `domain`.
    fn domain_keys(&self, domain: &str) -> Result<&DomainKeys, CipherError> {
        self.domains
            .get(domain)
            .ok_or_else(|| CipherError::UnknownDomain {
                domain: domain.to_owned(),
            })
    }

    /// Data key `key_id` of `domain`.
    fn key(&self, domain: &str, key_id: u32) -> Result<&DataKey, CipherError> {
        self.domain_keys(domain)?
            .keys
            .get(&key_id)
            .ok_or_else(|| CipherError::UnknownKey {
                domain: domain.to_owned(),
                key_id,
            })
    }

    /// `plaintext` encrypted under `domain`'s primary key, as wire-format text.
    pub fn encrypt(
        &self,
        domain: &str,
        mode: PiiMode,
        plaintext: &[u8],
    ) -> Result<String, CipherError> {
        let primary = self
            .primary(domain)
            .ok_or_else(|| CipherError::UnknownDomain {
                domain: domain.to_owned(),
            })?;
        let key = self.key(domain, primary)?;
        let failed = || CipherError::Failed {
            domain: domain.to_owned(),
            key_id: key.id,
        };
        let mut wire = Vec::with_capacity(HEADER + NONCE + plaintext.len() + 16);
        wire.push(mode.tag());
        wire.extend_from_slice(&key.id.to_be_bytes());
        match mode {
            PiiMode::Deterministic => {
                let mut siv = Aes256Siv::new((&key.siv).into());
                let sealed = siv
                    .encrypt([domain.as_bytes()], plaintext)
                    .map_err(|_| failed())?;
                wire.extend_from_slice(&sealed);
            }
            PiiMode::Randomized => {
                seal_into(&key.gcm, domain.as_bytes(), plaintext, &mut wire).ok_or_else(failed)?;
            }
        }
        Ok(BASE64.encode(wire))
    }

    /// `plaintext` encrypted (randomized) under the key of `subject` in `domain`, made and
    /// written to the subject key file when the subject has none. The key line is synced by
    /// [`Self::sync_subjects`], which callers run before they send the values.
    pub fn encrypt_for_subject(
        &self,
        domain: &str,
        subject: &str,
        plaintext: &[u8],
    ) -> Result<String, CipherError> {
        let keys = self.domain_keys(domain)?;
        let (subject_ref, cipher) = self
            .subjects
            .key_for(domain, keys, subject)
            .map_err(|e| subject_error(domain, e))?;
        let mut wire = Vec::with_capacity(HEADER + SUBJECT_REF + NONCE + plaintext.len() + 16);
        wire.push(SUBJECT_MODE);
        wire.extend_from_slice(&keys.primary.to_be_bytes());
        wire.extend_from_slice(&subject_ref);
        seal_into(&cipher, domain.as_bytes(), plaintext, &mut wire).ok_or_else(|| {
            CipherError::Failed {
                domain: domain.to_owned(),
                key_id: keys.primary,
            }
        })?;
        Ok(BASE64.encode(wire))
    }

    /// Syncs the subject key lines written since the last call (before their values are sent).
    pub fn sync_subjects(&self) -> Result<(), CipherError> {
        self.subjects.sync().map_err(|e| subject_error("(any)", e))
    }

    /// Whether `text` is a value of ours whose subject key was erased.
    pub fn is_forgotten(&self, text: &str) -> bool {
        matches!(self.open(text), Some(Err(CipherError::Forgotten { .. })))
    }

    /// The plaintext of a wire-format `text` of any domain: the key id names the domain (ids
    /// are unique across a keyset). `None` when no key of this keyring made it.
    pub fn decrypt_any(&self, text: &str) -> Option<Vec<u8>> {
        self.open(text)?.ok()
    }

    /// [`Self::decrypt`] of `text` in the domain its key id names; `None` when it is not the
    /// wire format or names no key of this keyring.
    pub fn open(&self, text: &str) -> Option<Result<Vec<u8>, CipherError>> {
        let wire = BASE64.decode(text).ok()?;
        let (domain, _, _) = self.owner(&wire)?;
        Some(self.decrypt(domain, text))
    }

    /// The domain whose keys hold the data key id of the wire-format bytes `wire`, its keys and
    /// the id.
    fn owner(&self, wire: &[u8]) -> Option<(&str, &DomainKeys, u32)> {
        let key_id = u32::from_be_bytes(wire.get(1..HEADER)?.try_into().ok()?);
        let (domain, keys) = self
            .domains
            .iter()
            .find(|(_, keys)| keys.keys.contains_key(&key_id))?;
        Some((domain, keys, key_id))
    }

    /// `text` encrypted again, in its mode, under its domain's primary key, when it is a value
    /// this keyring made under an older key. `None` for anything else: a value already under
    /// the primary key, or a string that is not one of ours (it does not parse as the wire
    /// format, names no key here, or fails authentication), which is left as it is.
    pub fn reencrypt(&self, text: &str) -> Option<Result<String, CipherError>> {
        let wire = BASE64.decode(text).ok()?;
        let mode = match *wire.first()? {
            1 => PiiMode::Deterministic,
            2 => PiiMode::Randomized,
            _ => return None,
        };
        let (domain, keys, key_id) = self.owner(&wire)?;
        if keys.primary == key_id {
            return None;
        }
        let plain = self.decrypt(domain, text).ok()?;
        Some(self.encrypt(domain, mode, &plain))
    }

    /// The plaintext of a wire-format `text` of `domain` (either mode, any of its keys).
    pub fn decrypt(&self, domain: &str, text: &str) -> Result<Vec<u8>, CipherError> {
        let not_ciphertext = || CipherError::NotCiphertext {
            domain: domain.to_owned(),
        };
        let wire = BASE64.decode(text).map_err(|_| not_ciphertext())?;
        if wire.len() < HEADER {
            return Err(not_ciphertext());
        }
        let key_id = u32::from_be_bytes(wire[1..HEADER].try_into().expect("four bytes"));
        let key = self.key(domain, key_id)?;
        let failed = || CipherError::Failed {
            domain: domain.to_owned(),
            key_id,
        };
        let body = &wire[HEADER..];
        match wire[0] {
            1 => {
                let mut siv = Aes256Siv::new((&key.siv).into());
                siv.decrypt([domain.as_bytes()], body).map_err(|_| failed())
            }
            2 if body.len() >= NONCE => open(&key.gcm, domain.as_bytes(), body).ok_or_else(failed),
            SUBJECT_MODE if body.len() >= SUBJECT_REF + NONCE => {
                let (subject_ref, sealed) = body.split_at(SUBJECT_REF);
                let subject_ref: super::subjects::SubjectRef =
                    subject_ref.try_into().expect("a reference's bytes");
                let candidates = self
                    .subjects
                    .keys_of(domain, self.domain_keys(domain)?, &subject_ref)
                    .map_err(|e| subject_error(domain, e))?;
                if candidates.is_empty() {
                    return Err(CipherError::Forgotten {
                        domain: domain.to_owned(),
                    });
                }
                candidates
                    .iter()
                    .find_map(|cipher| open(cipher, domain.as_bytes(), sealed))
                    .ok_or_else(failed)
            }
            _ => Err(not_ciphertext()),
        }
    }
}

/// Appends `msg` sealed with AES-256-GCM under a fresh random nonce to `out`: the nonce, then
/// the ciphertext and its tag. `None` when the cipher refuses (a message too long for GCM).
pub(super) fn seal_into(
    cipher: &Aes256Gcm,
    aad: &[u8],
    msg: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
        .ok()?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Some(())
}

/// The plaintext of `sealed` as [`seal_into`] wrote it; `None` when it does not authenticate.
pub(super) fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, body) = sealed.split_at_checked(NONCE)?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

/// A subject store failure as a cipher error (the store's own errors name the file).
fn subject_error(domain: &str, error: super::subjects::SubjectError) -> CipherError {
    match error {
        super::subjects::SubjectError::Cipher(e) => e,
        other => CipherError::SubjectStore {
            domain: domain.to_owned(),
            detail: other.to_string(),
        },
    }
}
