//! Idempotency keys of a table's ingests on a Kafka bus.
//!
//! On Kafka the broker places the records, so a group's offsets are known only once it is
//! acknowledged, and the embedded log's scheme ([`super::keys`]: the keys written and synced
//! before the messages, at offsets predicted under the producer lease) does not apply. Here the
//! topic itself carries the keys: each record of a keyed request goes out with the header
//! [`crate::bus::TAG_HEADER`], `<key digest> <body digest> <index> <count>` (its request's
//! key and body, as [`Idempotency`] digests, its index in the request and the request's record
//! count). The file `<state dir>/gateway-keys/<topic>.jsonl` summarises what the topic holds:
//! one line per acknowledged group, `{"at", "keys": [{key, body, positions}], "ends"}`, written
//! and synced after the broker's acknowledgement and before the answers, where `ends` is, per
//! partition, one past the last offset the file accounts for.
//!
//! A crash after the acknowledgement and before the line, or a send that failed part way, leaves
//! tagged records the file does not account for. Opening the keys (at the first keyed request of
//! a process, and again after a failed send) reads the file, then the topic past `ends` for
//! tags: a request found whole there is remembered as appended (a retry is a replay); one found
//! in part keeps the positions of the records that landed, and a retry appends exactly the
//! others, by index. No acknowledged or half-sent record is appended twice, none is lost.
//!
//! Keys live [`TTL`] (older keys are dropped on open; `ends` is kept). The file is a cache of
//! the topic's tags, read from where it ends: without it (a new state dir) the keys start empty
//! at the topic's current ends. One gateway process per topic keeps the keys.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::{Idempotency, TTL};
use crate::bus::{KafkaBus, Tag};

/// Most records a tag may count (far above the gateway's per-request limit).
const MAX_TAGGED: usize = 1 << 20;

/// Longest read of the topic's tags on open.
const SCAN_LIMIT: Duration = Duration::from_secs(120);

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

/// A record's tag: its request's key and body, its index and the request's record count.
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
    known: HashMap<String, Known>,
    ends: Vec<u64>,
}

impl KafkaKeys {
    /// Opens `topic`'s keys under `state_dir`: the file, then the topic's tags past it (see
    /// the module's doc). Blocking (reads the topic).
    pub fn open(
        kafka: &KafkaBus,
        topic: &str,
        partitions: u32,
        state_dir: &Path,
    ) -> Result<Self, String> {
        let opening = std::time::Instant::now();
        let dir = state_dir.join("gateway-keys");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.jsonl", file_name(topic)));
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        // A torn last line (a crash while writing it) does not parse: it is left out, and the
        // topic past the line before it is read again.
        let lines: Vec<Line> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mut known: HashMap<String, Known> = HashMap::new();
        let mut ends: Option<Vec<u64>> = None;
        let oldest = chrono::Utc::now().timestamp() - TTL.as_secs() as i64;
        for line in lines {
            let at = ends.get_or_insert_with(|| vec![0; partitions as usize]);
            for (end, line_end) in at.iter_mut().zip(&line.ends) {
                *end = (*end).max(*line_end);
            }
            if line.at >= oldest {
                for entry in line.keys {
                    merge(&mut known, entry.key, entry.known);
                }
            }
        }
        let from = match ends {
            Some(ends) => ends,
            // No file: the topic's tags start now.
            None => kafka.topic_ends(topic).map_err(|e| e.to_string())?,
        };
        let tags = kafka
            .tags(topic, &from, SCAN_LIMIT)
            .map_err(|e| e.to_string())?;
        let mut ends: Vec<u64> = from
            .iter()
            .zip(&tags.ends)
            .map(|(a, b)| *a.max(b))
            .collect();
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
            let mut positions = vec![None; count];
            positions[index] = Some((*partition, *offset));
            merge(
                &mut known,
                key.to_owned(),
                Known {
                    body: body.to_owned(),
                    positions,
                },
            );
            found += 1;
        }
        tracing::info!(
            topic,
            keys = known.len(),
            tagged_past_the_file = found,
            seconds = opening.elapsed().as_secs_f64(),
            "gateway: idempotency keys opened (the keys file, then the topic's tags past it)"
        );
        // Rewritten whole (the live keys and the ends), then renamed over: never half old.
        let tmp = path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp).map_err(io)?;
        let line = Line {
            at: chrono::Utc::now().timestamp(),
            keys: known
                .iter()
                .map(|(key, known)| Entry {
                    key: key.clone(),
                    known: known.clone(),
                })
                .collect(),
            ends: ends.clone(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| io(e.into()))?;
        bytes.push(b'\n');
        out.write_all(&bytes).map_err(io)?;
        out.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        ends.resize(partitions as usize, 0);
        Ok(Self {
            path,
            file,
            known,
            ends,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Known> {
        self.known.get(key)
    }

    /// Records an acknowledged group's keys, with where their records landed; synced.
    pub fn done(&mut self, keys: Vec<(String, Known)>) -> std::io::Result<()> {
        for (_, known) in &keys {
            for &(partition, offset) in known.positions.iter().flatten() {
                if let Some(end) = self.ends.get_mut(partition as usize) {
                    *end = (*end).max(offset + 1);
                }
            }
        }
        let line = Line {
            at: chrono::Utc::now().timestamp(),
            keys: keys
                .into_iter()
                .map(|(key, known)| Entry { key, known })
                .collect(),
            ends: self.ends.clone(),
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        for entry in line.keys {
            self.known.insert(entry.key, entry.known);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Adds what is known of `key` (a request's records found apart, or lines that each hold part).
fn merge(known: &mut HashMap<String, Known>, key: String, more: Known) {
    match known.get_mut(&key) {
        Some(have) if have.body == more.body && have.positions.len() == more.positions.len() => {
            for (slot, found) in have.positions.iter_mut().zip(more.positions) {
                if found.is_some() {
                    *slot = found;
                }
            }
        }
        _ => {
            known.insert(key, more);
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
        merge(&mut known, "k".into(), part(0, (0, 7)));
        merge(&mut known, "k".into(), part(2, (1, 3)));
        let k = &known["k"];
        assert_eq!(k.positions, [Some((0, 7)), None, Some((1, 3))]);
        assert!(!k.whole());
    }
}
