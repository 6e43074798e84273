//! Idempotency keys of a table's ingests on a Kafka bus.
//!
//! On Kafka the broker places the records, so a group's offsets are known only once it is
//! acknowledged, and the embedded log's scheme ([`super::keys`]: the keys written and synced
//! before the messages, at offsets predicted under the producer lease) does not apply. Here the
//! topic itself carries the keys: each record of a keyed request goes out with the header
//! [`crate::bus::TAG_HEADER`], `<key> <body> <index> <count>` (its request's key and body
//! digests sealed with this state dir's secret, see [`KafkaKeys::seal`], its index in the
//! request and the request's record count). The file `<state dir>/gateway-keys/<topic>.jsonl`
//! summarises what the topic holds: one line per acknowledged group,
//! `{"at", "keys": [{key, at, body, positions}], "ends"}`, written and synced after the
//! broker's acknowledgement and before the answers, where `ends` is, per partition, one past
//! the last offset the file accounts for. Every placed group advances `ends`, keyed or not
//! (a line at most once a second when no key needs one), so the topic read on open stays short.
//!
//! A crash after the acknowledgement and before the line, or a send that failed part way, leaves
//! tagged records the file does not account for. Opening the keys (at the table's first group in
//! a process, and at the first keyed request after a failed send) reads the file, then the topic
//! past `ends` for tags: a request found whole there is remembered as appended (a retry is a
//! replay); one found in part keeps the positions of the records that landed, and a retry
//! appends exactly the others, by index. No acknowledged or half-sent record is appended twice,
//! none is lost. A read of the topic cut by its time limit ([`SCAN_LIMIT`] for a keyed request,
//! [`EAGER_SCAN_LIMIT`] when nothing waits on it) keeps its progress in the file and
//! goes on from there at the next open.
//!
//! Each key lives [`TTL`] from when it was first recorded (older ones are dropped on open and
//! while serving; the file is rewritten when most of it is dead). The file is a cache of the
//! topic's tags, read from where it ends: without it (a new state dir), or without the secret
//! its digests were sealed with, the keys start empty at the topic's current ends. A topic deleted and made again needs its keys file deleted too (the
//! file's ends cannot be told from the topic's: some brokers report a partition's end seconds
//! late, past offsets they have acknowledged). One gateway process per topic keeps the keys.
//!
//! The digests are sealed (BLAKE3 keyed with `<state dir>/gateway-keys/secret`, 32 random bytes
//! made on first use, mode 0600) because the tags travel to the brokers and every reader of the
//! topic: a plain digest of a body would let a reader confirm a guessed body, PII in clear
//! included.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::keys::{Idempotency, TTL};
use crate::bus::{KafkaBus, Tag};

/// Most records a tag may count: a request holds no more.
const MAX_TAGGED: usize = super::RECORDS_CEILING;

/// Longest read of the topic's tags on one open.
pub const SCAN_LIMIT: Duration = Duration::from_secs(120);

/// Longest read of the topic's tags on an open that no keyed request waits for (the table's
/// first group): requests without a key wait for it, and a long backlog is read on at the next
/// keyed request.
pub const EAGER_SCAN_LIMIT: Duration = Duration::from_secs(5);

/// A line that records only how far the topic is accounted for is written at most this often.
const ENDS_EVERY: Duration = Duration::from_secs(1);

/// Keys past their [`TTL`] are dropped from memory at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a key is known for: its body, and where each record of the request landed, by index
/// (`None`: not on the topic; a retry appends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub body: String,
    pub positions: Vec<Option<(u32, u64)>>,
}

impl Known {
    /// Every record of the request is on the topic.
    pub fn whole(&self) -> bool {
        self.positions.iter().all(Option::is_some)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    /// When the key was first recorded (absent in lines of earlier versions: the line's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
    #[serde(flatten)]
    known: Known,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    at: i64,
    #[serde(default)]
    keys: Vec<Entry>,
    ends: Vec<u64>,
}

impl Line {
    /// The line as the file holds it: JSON and a newline.
    fn to_bytes(&self) -> serde_json::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// A key in memory: when it was first recorded, and what is known of it.
#[derive(Debug, Clone)]
struct Kept {
    at: i64,
    known: Known,
}

/// A record's tag: its request's sealed key and body, its index and the request's record count.
pub fn tag(id: &Idempotency, index: usize, count: usize) -> String {
    format!("{} {} {index} {count}", id.key, id.body)
}

/// The parts of a tag; `None` for one this version does not write.
fn parse_tag(tag: &str) -> Option<(&str, &str, usize, usize)> {
    let mut parts = tag.split(' ');
    let (key, body) = (parts.next()?, parts.next()?);
    let index: usize = parts.next()?.parse().ok()?;
    let count: usize = parts.next()?.parse().ok()?;
    // A request holds at most the gateway's record limit; a larger count is not ours.
    (parts.next().is_none() && index < count && count <= MAX_TAGGED)
        .then_some((key, body, index, count))
}

/// The keys of one topic, in memory, and the file that summarises them.
#[derive(Debug)]
pub struct KafkaKeys {
    path: PathBuf,
    file: File,
    secret: [u8; 32],
    known: HashMap<String, Kept>,
    ends: Vec<u64>,
    /// `ends` moved past the file's last line.
    unwritten: bool,
    written: Instant,
    pruned: Instant,
    /// Lines and entries appended since the file was last rewritten.
    appended: usize,
}

impl KafkaKeys {
    /// Opens `topic`'s keys under `state_dir`: the file, then the topic's tags past it (see
    /// the module's doc). Blocking (reads the topic). A read of the topic cut by
    /// `limit` is an error that keeps its progress.
    pub fn open(
        kafka: &KafkaBus,
        topic: &str,
        partitions: u32,
        state_dir: &Path,
        limit: Duration,
    ) -> Result<Self, String> {
        let opening = Instant::now();
        let dir = state_dir.join("gateway-keys");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        sync_dir(&dir)?;
        let (secret, new_secret) = secret(&dir.join("secret"))?;
        let path = dir.join(format!("{}.jsonl", file_name(topic)));
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let text = match std::fs::read_to_string(&path) {
            // Digests sealed with a secret that is gone can never match again.
            Ok(_) if new_secret => String::new(),
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let now = chrono::Utc::now().timestamp();
        let (mut known, filed) = read_lines(&text, partitions, oldest());
        let from = match filed {
            Some(ends) => ends,
            // No file: the topic's tags start now.
            None => kafka.topic_ends(topic).map_err(|e| e.to_string())?,
        };
        let tags = kafka.tags(topic, &from, limit).map_err(|e| e.to_string())?;
        let mut ends: Vec<u64> = from
            .iter()
            .zip(&tags.ends)
            .map(|(a, b)| *a.max(b))
            .collect();
        ends.resize(partitions as usize, 0);
        let mut found = 0;
        for Tag {
            partition,
            offset,
            value,
        } in &tags.found
        {
            if let Some(end) = ends.get_mut(*partition as usize) {
                *end = (*end).max(offset + 1);
            }
            let Some((key, body, index, count)) = parse_tag(value) else {
                continue;
            };
            found += 1;
            // The request's other records fill the same positions (one allocation per key).
            if let Some(have) = known.get_mut(key)
                && have.known.body == body
                && have.known.positions.len() == count
            {
                have.known.positions[index] = Some((*partition, *offset));
                have.at = have.at.min(now);
                continue;
            }
            // A first record of the key, or one of another request under the same key: it
            // stands for the key from now on (as `merge` decides).
            let mut positions = vec![None; count];
            positions[index] = Some((*partition, *offset));
            let known_now = Known {
                body: body.to_owned(),
                positions,
            };
            known.insert(
                key.to_owned(),
                Kept {
                    at: now,
                    known: known_now,
                },
            );
        }
        tracing::info!(
            topic,
            keys = known.len(),
            tagged_past_the_file = found,
            complete = tags.complete,
            seconds = opening.elapsed().as_secs_f64(),
            "gateway: idempotency keys opened (the keys file, then the topic's tags past it)"
        );
        let keys = Self {
            file: rewrite(&path, &known, &ends)?,
            path,
            secret,
            known,
            ends,
            unwritten: false,
            written: Instant::now(),
            pruned: Instant::now(),
            appended: 0,
        };
        if !tags.complete {
            return Err(format!(
                "the topic's tags were read from {from:?} to {:?}, not to its ends, within {} s; \
                 the next keyed request goes on from there",
                keys.ends,
                limit.as_secs()
            ));
        }
        Ok(keys)
    }

    /// `id` sealed with this state dir's secret: what the tags and the file hold.
    pub fn seal(&self, id: &Idempotency) -> Idempotency {
        seal(&self.secret, id)
    }

    /// What is known of a sealed key that has not expired.
    pub fn get(&self, key: &str) -> Option<&Known> {
        self.known
            .get(key)
            .filter(|kept| kept.at >= oldest())
            .map(|kept| &kept.known)
    }

    /// Records an acknowledged group: `placed`, where the broker put each of its records, and
    /// its keys with where their records landed. A group with keys is synced before this
    /// returns; one without is written at most once a second (see the module's doc).
    pub fn placed(
        &mut self,
        placed: &[(u32, u64)],
        keys: Vec<(String, Known)>,
    ) -> std::io::Result<()> {
        // The keys' other positions (records an earlier attempt placed) lie before the ends
        // already: the line that recorded them, or the open that found their tags, moved them.
        for &(partition, offset) in placed {
            if let Some(end) = self.ends.get_mut(partition as usize)
                && offset + 1 > *end
            {
                *end = offset + 1;
                self.unwritten = true;
            }
        }
        if keys.is_empty() && !(self.unwritten && self.written.elapsed() >= ENDS_EVERY) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp();
        let entries: Vec<Entry> = keys
            .into_iter()
            .map(|(key, known)| {
                let at = self.known.get(&key).map_or(now, |kept| kept.at);
                Entry {
                    key,
                    at: Some(at),
                    known,
                }
            })
            .collect();
        let line = Line {
            at: now,
            keys: entries,
            ends: self.ends.clone(),
        };
        self.file.write_all(&line.to_bytes()?)?;
        self.file.sync_data()?;
        (self.unwritten, self.written) = (false, Instant::now());
        self.appended += 1 + line.keys.len();
        for entry in line.keys {
            let at = entry.at.unwrap_or(now);
            self.known.insert(
                entry.key,
                Kept {
                    at,
                    known: entry.known,
                },
            );
        }
        self.prune()
    }

    /// Drops keys past their TTL, and rewrites the file once most of what it holds is dead.
    fn prune(&mut self) -> std::io::Result<()> {
        if self.pruned.elapsed() < PRUNE_EVERY {
            return Ok(());
        }
        self.pruned = Instant::now();
        let oldest = oldest();
        self.known.retain(|_, kept| kept.at >= oldest);
        if self.appended > 4096 + 2 * self.known.len() {
            self.file =
                rewrite(&self.path, &self.known, &self.ends).map_err(std::io::Error::other)?;
            self.appended = 0;
        }
        Ok(())
    }
}

/// The time (seconds since the epoch) before which a key has expired.
fn oldest() -> i64 {
    chrono::Utc::now().timestamp() - TTL.as_secs() as i64
}

/// The live keys and the ends of a keys file's lines (`None` for ends: no line).
fn read_lines(
    text: &str,
    partitions: u32,
    oldest: i64,
) -> (HashMap<String, Kept>, Option<Vec<u64>>) {
    let mut known = HashMap::new();
    let mut ends: Option<Vec<u64>> = None;
    // A torn last line (a crash while writing it) does not parse: it is left out, and the topic
    // past the line before it is read again.
    for line in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
    {
        let at = ends.get_or_insert_with(|| vec![0; partitions as usize]);
        for (end, line_end) in at.iter_mut().zip(&line.ends) {
            *end = (*end).max(*line_end);
        }
        for entry in line.keys {
            let first = entry.at.unwrap_or(line.at);
            if first >= oldest {
                merge(&mut known, entry.key, first, entry.known);
            }
        }
    }
    (known, ends)
}

/// Writes the keys file whole (the live keys, each with its own time, and the ends) and renames
/// it over the old one, so it is never half old; returns it opened for appending.
fn rewrite(path: &Path, known: &HashMap<String, Kept>, ends: &[u64]) -> Result<File, String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = File::create(&tmp).map_err(io)?;
    let line = Line {
        at: chrono::Utc::now().timestamp(),
        keys: known
            .iter()
            .map(|(key, kept)| Entry {
                key: key.clone(),
                at: Some(kept.at),
                known: kept.known.clone(),
            })
            .collect(),
        ends: ends.to_vec(),
    };
    out.write_all(&line.to_bytes().map_err(|e| io(e.into()))?)
        .map_err(io)?;
    out.sync_data().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path)?;
    OpenOptions::new().append(true).open(path).map_err(io)
}

/// `id`'s digests keyed with `secret` (BLAKE3's keyed mode), as hex.
pub fn seal(secret: &[u8; 32], id: &Idempotency) -> Idempotency {
    let keyed = |what: &str, digest: &str| {
        let mut hasher = blake3::Hasher::new_keyed(secret);
        hasher.update(what.as_bytes());
        hasher.update(&[0]);
        hasher.update(digest.as_bytes());
        hasher.finalize().to_hex().to_string()
    };
    Idempotency {
        key: keyed("key", &id.key),
        body: keyed("body", &id.body),
    }
}

/// The secret that seals the digests, made (32 random bytes, mode 0600) if missing; `true`
/// when made now.
fn secret(path: &Path) -> Result<([u8; 32], bool), String> {
    use rand::TryRngCore;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    match std::fs::read(path) {
        Ok(bytes) => Ok((parse_secret(path, &bytes)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut secret)
                .map_err(|e| format!("random bytes for {}: {e}", path.display()))?;
            // Whole or not at all, and of two processes making one at once, one wins and the
            // other reads it.
            if crate::files::make_once(path, &secret).map_err(io)? {
                return Ok((secret, true));
            }
            let bytes = std::fs::read(path).map_err(io)?;
            Ok((parse_secret(path, &bytes)?, false))
        }
        Err(e) => Err(io(e)),
    }
}

/// The secret read from `path`.
fn parse_secret(path: &Path, bytes: &[u8]) -> Result<[u8; 32], String> {
    bytes.try_into().map_err(|_| {
        format!(
            "{}: not a secret of 32 bytes ({} bytes); delete it to make a new one \
             (the keys sealed with it are then forgotten)",
            path.display(),
            bytes.len()
        )
    })
}

/// Syncs the folder holding `path`, so that a file made or renamed there survives a power loss.
fn sync_dir(path: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Adds what is known of `key` (a request's records found apart, or lines that each hold part);
/// the key keeps the time it was first recorded.
fn merge(known: &mut HashMap<String, Kept>, key: String, at: i64, more: Known) {
    match known.get_mut(&key) {
        Some(have)
            if have.known.body == more.body
                && have.known.positions.len() == more.positions.len() =>
        {
            for (slot, found) in have.known.positions.iter_mut().zip(more.positions) {
                if found.is_some() {
                    *slot = found;
                }
            }
            have.at = have.at.min(at);
        }
        _ => {
            known.insert(key, Kept { at, known: more });
        }
    }
}

/// A topic name as a file name.
fn file_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_and_a_foreign_one_is_ignored() {
        let id = Idempotency::new("orders", "k", b"{}");
        let tag = tag(&id, 2, 5);
        assert_eq!(
            parse_tag(&tag),
            Some((id.key.as_str(), id.body.as_str(), 2, 5))
        );
        assert_eq!(parse_tag("a b 5 5"), None, "index past the count");
        assert_eq!(parse_tag("a b 1"), None);
        assert_eq!(parse_tag("a b 1 2 3"), None);
    }

    #[test]
    fn records_of_one_request_found_apart_are_merged_by_index() {
        let mut known = HashMap::new();
        let part = |i: usize, at: (u32, u64)| {
            let mut positions = vec![None; 3];
            positions[i] = Some(at);
            Known {
                body: "b".into(),
                positions,
            }
        };
        merge(&mut known, "k".into(), 20, part(0, (0, 7)));
        merge(&mut known, "k".into(), 10, part(2, (1, 3)));
        let Kept { at, known: k } = &known["k"];
        assert_eq!(*at, 10, "the key keeps the time it was first recorded");
        assert_eq!(k.positions, [Some((0, 7)), None, Some((1, 3))]);
        assert!(!k.whole());
    }

    #[test]
    fn a_key_expires_by_the_time_it_was_first_recorded_not_by_its_line() {
        let entry = |key: &str, at: Option<i64>| Entry {
            key: key.into(),
            at,
            known: Known {
                body: "b".into(),
                positions: vec![Some((0, 1))],
            },
        };
        let line = |at: i64, keys: Vec<Entry>, end: u64| {
            serde_json::to_string(&Line {
                at,
                keys,
                ends: vec![end, 0],
            })
            .unwrap()
        };
        // A file rewritten at 1000 holds a key first recorded at 100 and one at 900; a line of
        // an earlier version (no time of its own) at 950; a torn line.
        let text = [
            line(
                1000,
                vec![entry("old", Some(100)), entry("new", Some(900))],
                7,
            ),
            line(950, vec![entry("legacy", None)], 9),
            "{\"at\": 1".to_owned(),
        ]
        .join("\n");
        let (known, ends) = read_lines(&text, 2, 500);
        let mut live: Vec<&str> = known.keys().map(String::as_str).collect();
        live.sort();
        assert_eq!(live, ["legacy", "new"], "the key of 100 expired at 500");
        assert_eq!(known["legacy"].at, 950);
        assert_eq!(ends, Some(vec![9, 0]));
        assert_eq!(read_lines("", 2, 0).1, None, "no line: no ends");
    }

    #[test]
    fn sealed_digests_depend_on_the_secret() {
        let id = Idempotency::new("orders", "k", b"{}");
        let dir = tempfile::tempdir().unwrap();
        let (one, made) = secret(&dir.path().join("a")).unwrap();
        assert!(made);
        assert_eq!(secret(&dir.path().join("a")).unwrap(), (one, false));
        let (two, _) = secret(&dir.path().join("b")).unwrap();
        let (a, b) = (seal(&one, &id), seal(&two, &id));
        assert_eq!(a, seal(&one, &id), "the same secret seals alike");
        assert_ne!(a.key, b.key);
        assert_ne!(a.body, b.body);
        assert_ne!(a.key, id.key, "never the plain digest");
        assert_ne!(a.key, a.body);
    }
}
