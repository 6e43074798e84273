//! Idempotency keys of a table's ingests, kept durably beside its topic.
//!
//! A retried request with the same `Idempotency-Key` (and the same body) answers what the first
//! one did, with the same offsets, and appends nothing. The keys of one group commit are one
//! line of `<topic>/gateway-keys.jsonl`, written and synced *before* the group's messages:
//! `{"at", "checks": [{partition, offset, digest}], "keys": [{key, body, positions}]}`, where
//! `checks` names the group's first message in each partition it appends to, with the BLAKE3
//! digest of its value. The log appends a group one partition after the other, so a crash (or
//! a failed append) can leave a line whose messages reached the log in all, none or some of its
//! partitions. Only the last line can be in doubt: it is checked against the log when the keys
//! are opened (at start-up, and again after a failed append). None there: the line is dropped,
//! and a retry appends the request. Some there: the line stays with the partitions that `missing`
//! names, and a retry appends exactly the request's records of those partitions, so no record
//! is lost and none is appended twice. Keys live [`TTL`]; older lines are dropped on open.
//!
//! Keys are stored as SHA-256 digests of the table name and the key, bodies as digests too.
//! One gateway process per lake keeps the keys (two gateways on one lake do not see each
//! other's keys).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bus::EmbeddedLog;

/// How long a key is remembered.
pub const TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A request's key and body, as digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub body: String,
}

impl Idempotency {
    pub fn new(table: &str, key: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(table.as_bytes());
        hasher.update([0]);
        hasher.update(key.as_bytes());
        Self {
            key: hex::encode(hasher.finalize()),
            body: hex::encode(Sha256::digest(body)),
        }
    }
}

/// The first message of a group commit, to tell whether the group reached the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub partition: u32,
    pub offset: u64,
    pub digest: String,
}

impl Check {
    pub fn new(partition: u32, offset: u64, value: &[u8]) -> Self {
        Self {
            partition,
            offset,
            digest: blake3::hash(value).to_hex().to_string(),
        }
    }
}

/// One key of a group line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyed {
    pub key: String,
    pub body: String,
    pub positions: Vec<(u32, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    at: i64,
    checks: Vec<Check>,
    #[serde(default)]
    keys: Vec<Keyed>,
    /// Partitions of `checks` whose messages did not reach the log (see the module's doc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    missing: Vec<u32>,
}

/// What a key is known for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub body: String,
    pub positions: Vec<(u32, u64)>,
    /// Partitions whose records of the request are not on the log: a retry appends them.
    pub missing: Vec<u32>,
}

/// The keys of one topic, in memory, and the file they are kept in.
#[derive(Debug)]
pub struct Keys {
    path: PathBuf,
    file: File,
    known: HashMap<String, Known>,
}

impl Keys {
    /// Opens the topic's keys: drops lines older than [`TTL`] and settles the last line against
    /// the log (see the module's doc). Called under the producer lease.
    pub fn open(log: &EmbeddedLog, topic: &str) -> std::io::Result<Self> {
        let path = log.sidecar(topic, "gateway-keys.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let oldest = chrono::Utc::now().timestamp() - TTL.as_secs() as i64;
        // A torn last line (a crash while writing it) does not parse: it is left out.
        let mut lines: Vec<Line> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mut changed = lines.len() != text.lines().count();
        if let Some(last) = lines.last_mut() {
            let missing: Vec<u32> = last
                .checks
                .iter()
                .filter(|check| !backed(log, topic, check))
                .map(|check| check.partition)
                .collect();
            if missing.len() == last.checks.len() {
                lines.pop();
                changed = true;
            } else if missing != last.missing {
                last.missing = missing;
                changed = true;
            }
        }
        let before = lines.len();
        lines.retain(|l| l.at >= oldest);
        if changed || lines.len() != before {
            // Rewritten whole, then renamed over: the file is never half old, half new.
            let tmp = path.with_extension("jsonl.tmp");
            let mut out = File::create(&tmp)?;
            for line in &lines {
                serde_json::to_writer(&mut out, line)?;
                out.write_all(b"\n")?;
            }
            out.sync_data()?;
            std::fs::rename(&tmp, &path)?;
        }
        let mut known = HashMap::new();
        for line in lines {
            for keyed in line.keys {
                // The request's own partitions among those missing.
                let missing = line
                    .missing
                    .iter()
                    .copied()
                    .filter(|p| keyed.positions.iter().any(|(q, _)| q == p))
                    .collect();
                known.insert(
                    keyed.key,
                    Known {
                        body: keyed.body,
                        positions: keyed.positions,
                        missing,
                    },
                );
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file, known })
    }

    pub fn get(&self, key: &str) -> Option<&Known> {
        self.known.get(key)
    }

    /// Writes and syncs a group's keys, before its messages are appended. `checks` names the
    /// group's first message in each partition it appends to.
    pub fn begin(&mut self, checks: &[Check], keys: &[Keyed]) -> std::io::Result<()> {
        self.write(&Line {
            at: chrono::Utc::now().timestamp(),
            checks: checks.to_vec(),
            keys: keys.to_vec(),
            missing: Vec::new(),
        })?;
        for keyed in keys {
            self.known.insert(
                keyed.key.clone(),
                Known {
                    body: keyed.body.clone(),
                    positions: keyed.positions.clone(),
                    missing: Vec::new(),
                },
            );
        }
        Ok(())
    }

    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Whether the message `check` names is in the log with that value. A message released from
/// the log (stored in bronze, see [`EmbeddedLog::release`]) was there: a line whose group did
/// not reach the log is settled (dropped or marked missing) before anything else is appended,
/// so the offsets it names hold its own messages or nothing.
fn backed(log: &EmbeddedLog, topic: &str, check: &Check) -> bool {
    if log
        .start_offset(topic, check.partition)
        .is_ok_and(|start| check.offset < start)
    {
        return true;
    }
    log.read(topic, check.partition, check.offset, 1)
        .ok()
        .and_then(|messages| messages.into_iter().next())
        .is_some_and(|m| Check::new(check.partition, check.offset, &m.value) == *check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Batch, partition_for};

    fn log_with_topic(dir: &std::path::Path, partitions: u32) -> EmbeddedLog {
        let log = EmbeddedLog::new(dir.to_owned());
        log.ensure_topic("t", partitions).unwrap();
        log
    }

    fn keyed(key: &str, positions: &[(u32, u64)]) -> Keyed {
        Keyed {
            key: key.into(),
            body: "b".into(),
            positions: positions.to_vec(),
        }
    }

    fn append(log: &EmbeddedLog, key: &[u8], value: &[u8]) {
        let mut batch = Batch::default();
        batch.push(key, value, 0);
        log.append("t", &batch).unwrap();
    }

    /// A topic of one partition, and its keys after a first group (key `k1`) whose line was
    /// written and whose message (`one`, offset 0) reached the log.
    fn one_group_in_the_log(dir: &std::path::Path) -> (EmbeddedLog, Keys) {
        let log = log_with_topic(dir, 1);
        let mut keys = Keys::open(&log, "t").unwrap();
        keys.begin(&[Check::new(0, 0, b"one")], &[keyed("k1", &[(0, 0)])])
            .unwrap();
        append(&log, b"a", b"one");
        (log, keys)
    }

    #[test]
    fn a_group_whose_messages_reached_the_log_is_remembered_and_one_that_did_not_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut keys) = one_group_in_the_log(dir.path());
        // Group 2: its line, then a crash before the append.
        keys.begin(&[Check::new(0, 1, b"two")], &[keyed("k2", &[(0, 1)])])
            .unwrap();
        drop(keys);
        let keys = Keys::open(&log, "t").unwrap();
        assert!(keys.get("k1").is_some());
        assert!(
            keys.get("k2").is_none(),
            "a group not in the log is forgotten"
        );
        // Another producer's message at that offset does not bring it back.
        append(&log, b"a", b"someone else");
        let keys = Keys::open(&log, "t").unwrap();
        assert!(keys.get("k2").is_none());
        assert!(keys.get("k1").is_some());
    }

    #[test]
    fn a_group_that_reached_some_of_its_partitions_names_the_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_with_topic(dir.path(), 2);
        // A key on each partition.
        let on = |partition: u32| {
            (0u8..=255)
                .map(|b| vec![b'k', b])
                .find(|k| partition_for(k, 2) == partition)
                .unwrap()
        };
        let mut keys = Keys::open(&log, "t").unwrap();
        let checks = [Check::new(0, 0, b"zero"), Check::new(1, 0, b"one")];
        keys.begin(
            &checks,
            &[
                keyed("both", &[(0, 0), (1, 0)]),
                keyed("first", &[(0, 1)]),
                keyed("second", &[(1, 1)]),
            ],
        )
        .unwrap();
        // A crash after partition 0's block, before partition 1's.
        append(&log, &on(0), b"zero");
        drop(keys);
        let keys = Keys::open(&log, "t").unwrap();
        assert_eq!(keys.get("both").unwrap().missing, [1]);
        assert!(keys.get("first").unwrap().missing.is_empty());
        assert_eq!(keys.get("second").unwrap().missing, [1]);
        // Settled once, written down: the same answer on the next open.
        let path = keys.path().to_owned();
        drop(keys);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"missing\":[1]"), "{text}");
        let keys = Keys::open(&log, "t").unwrap();
        assert_eq!(keys.get("both").unwrap().missing, [1]);
    }

    #[test]
    fn a_group_whose_messages_were_released_from_the_log_is_still_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, keys) = one_group_in_the_log(dir.path());
        drop(keys);
        // Requests without a key after it, then bronze stores all three and a vacuum releases
        // what the log may give back (all but its last block).
        append(&log, b"a", b"two");
        append(&log, b"a", b"three");
        log.release("t", 0, 3).unwrap();
        assert_eq!(log.start_offset("t", 0).unwrap(), 2);
        // At the next start the last line names a released message: it was there.
        let keys = Keys::open(&log, "t").unwrap();
        assert_eq!(keys.get("k1").unwrap().positions, [(0, 0)]);
        assert!(keys.get("k1").unwrap().missing.is_empty());
    }

    #[test]
    fn a_torn_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (log, keys) = one_group_in_the_log(dir.path());
        let path = keys.path().to_owned();
        drop(keys);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at\":1,\"che")
            .unwrap();
        let keys = Keys::open(&log, "t").unwrap();
        assert!(keys.get("k1").is_some());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_key_is_scoped_to_its_table_and_a_body_is_told_apart() {
        let a = Idempotency::new("orders", "k", b"{}");
        assert_eq!(a, Idempotency::new("orders", "k", b"{}"));
        assert_ne!(a.key, Idempotency::new("customers", "k", b"{}").key);
        assert_ne!(a.body, Idempotency::new("orders", "k", b"{ }").body);
    }
}
