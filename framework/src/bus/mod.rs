//! The topic bus between producers and bronze: the embedded log (the default, no server) or
//! Kafka, behind the same [`Bus`] enum.

pub mod columns;
mod embedded;
mod kafka;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use bytes::Bytes;

pub use columns::Columns;
pub use embedded::{Chunk, EmbeddedLog};
pub use kafka::{GroupMember, KafkaBus, StartOffsets, TAG_HEADER, Tag, Tags};

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("topic {topic}: {source}")]
    Io {
        topic: String,
        source: std::io::Error,
    },
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error(
        "topic {topic}: the embedded log at {} has format {found:?}, written by another version of the framework (this one reads blocks-lz4-1 and blocks-lz4-2, and writes blocks-lz4-2)\n  hint: consume it with the version that wrote it, or delete that folder and produce again",
        dir.display()
    )]
    LogFormat {
        topic: String,
        dir: PathBuf,
        found: String,
    },
    #[error("topic {topic}: Kafka: {}\n  hint: {}", kafka_text(.source), kafka_hint(.source))]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "topic {topic}: {count} message(s) were not acknowledged by the broker; first: {first}"
    )]
    Delivery {
        topic: String,
        count: usize,
        first: String,
    },
    #[error(
        "topic {topic} has {actual} partition(s) but the idcard declares {declared}\n  hint: a topic's partition count cannot change under the offsets stored in bronze and silver; set `topic.partitions: {actual}` again, or move the table to a new topic name (and a new lake) to repartition it"
    )]
    PartitionCount {
        topic: String,
        declared: u32,
        actual: u32,
    },
    #[error("topic {topic}: producer lease {source}")]
    Lease {
        topic: String,
        source: crate::lease::LeaseError,
    },
    #[error("topic {topic}: consumer group: {reason}")]
    Group { topic: String, reason: String },
    #[error(
        "topic {topic} partition {partition}: offset {offset} was released from the embedded log, which now starts at offset {start} (a vacuum frees the messages bronze has stored)\n  hint: those messages are rows of bronze (and of the reject table); read them there, or run again if another run stored them meanwhile"
    )]
    Released {
        topic: String,
        partition: u32,
        offset: u64,
        start: u64,
    },
    #[error("topic {topic} partition {partition}: corrupt record at offset {offset}: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One message as stored on a topic. Key and value share the buffer the message was read into
/// (one read per batch on the embedded log, no copy per message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub offset: u64,
    /// Message time, milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
}

/// A message to send, on its own (tests and one-off callers; producers fill a [`Batch`]).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
}

/// Messages to send, framed back to back in one buffer exactly as the embedded log stores them
/// (`u32` length of the rest, `i64` timestamp, `u32` key length, key, value): a producer
/// allocates nothing per message, and the log writes a partition's frames as they are.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    bytes: Vec<u8>,
    len: usize,
}

/// One framed message.
#[derive(Debug, Clone, Copy)]
pub struct Framed<'a> {
    /// The whole frame, as the embedded log writes it.
    pub frame: &'a [u8],
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub timestamp_ms: i64,
}

/// Bytes of a frame before its key: length, timestamp, key length.
const FRAME_HEADER: usize = 4 + 8 + 4;

/// The frames in `bytes`, in order; a frame that does not fit is an error, which ends the walk.
pub(crate) fn frames(bytes: &[u8]) -> impl Iterator<Item = Result<Framed<'_>, &'static str>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == bytes.len() {
            return None;
        }
        let frame = frame_at(&bytes[at..]);
        at = match frame {
            Ok(frame) => at + frame.frame.len(),
            Err(_) => bytes.len(),
        };
        Some(frame)
    })
}

/// The frame at the start of `bytes`.
fn frame_at(bytes: &[u8]) -> Result<Framed<'_>, &'static str> {
    let header = bytes
        .get(..FRAME_HEADER)
        .ok_or("message shorter than its header")?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let end = 4 + u32_at(0) as usize;
    let key_end = FRAME_HEADER + u32_at(12) as usize;
    if end > bytes.len() || key_end > end {
        return Err("message longer than its block");
    }
    Ok(Framed {
        frame: &bytes[..end],
        key: &bytes[FRAME_HEADER..key_end],
        value: &bytes[key_end..end],
        timestamp_ms: i64::from_le_bytes(header[4..12].try_into().expect("8 bytes")),
    })
}

impl Batch {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a message whose key `key` and then value `value` write into the buffer.
    pub fn push_with(
        &mut self,
        timestamp_ms: i64,
        key: impl FnOnce(&mut Vec<u8>),
        value: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; FRAME_HEADER]);
        self.bytes[start + 4..start + 12].copy_from_slice(&timestamp_ms.to_le_bytes());
        key(&mut self.bytes);
        let key_len = self.bytes.len() - start - FRAME_HEADER;
        value(&mut self.bytes);
        let body_len = self.bytes.len() - start - 4;
        self.bytes[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.bytes[start + 12..start + 16].copy_from_slice(&(key_len as u32).to_le_bytes());
        self.len += 1;
    }

    pub fn push(&mut self, key: &[u8], value: &[u8], timestamp_ms: i64) {
        self.push_with(
            timestamp_ms,
            |out| out.extend_from_slice(key),
            |out| out.extend_from_slice(value),
        );
    }

    pub fn iter(&self) -> impl Iterator<Item = Framed<'_>> {
        frames(&self.bytes).map(|frame| frame.expect("a batch holds whole frames"))
    }
}

impl<'a> FromIterator<&'a Record> for Batch {
    fn from_iter<I: IntoIterator<Item = &'a Record>>(records: I) -> Self {
        let mut batch = Self::default();
        for record in records {
            batch.push(&record.key, &record.value, record.timestamp_ms);
        }
        batch
    }
}

/// A Kafka error as the user sees it: a refused client setting is named without its value,
/// which librdkafka's message repeats (a password given in `--bus`'s query, say).
fn kafka_text(error: &rdkafka::error::KafkaError) -> String {
    match error {
        rdkafka::error::KafkaError::ClientConfig(result, _, key, _) => {
            format!("the client setting `{key}` was refused ({result:?})")
        }
        other => other.to_string(),
    }
}

fn kafka_hint(error: &rdkafka::error::KafkaError) -> &'static str {
    match error {
        rdkafka::error::KafkaError::ClientConfig(..) => {
            "check that setting in --bus's query (`kafka://host:port?key=value&...`): librdkafka's CONFIGURATION.md lists the settings; SSL and SASL ones need a build with them"
        }
        _ => "is the broker of --bus running and reachable?",
    }
}

/// Where topics live.
#[derive(Debug, Clone)]
pub enum Bus {
    /// File-backed log under the lake (`<lake>/_bus`).
    Embedded(EmbeddedLog),
    /// A Kafka cluster.
    Kafka(KafkaBus),
}

impl Bus {
    /// The embedded log rooted at `dir`.
    pub fn embedded(dir: PathBuf) -> Self {
        Self::Embedded(EmbeddedLog::new(dir))
    }

    /// The bus named by `--bus`: `embedded` (under `lake_bus_dir`) or
    /// `kafka://host:port[,host:port...][?librdkafka.key=value&...]`, whose query parameters are
    /// passed to every Kafka client (e.g. `security.protocol=SSL`, `debug=broker`).
    pub fn from_url(url: &str, lake_bus_dir: PathBuf) -> Option<Self> {
        if url == "embedded" {
            return Some(Self::embedded(lake_bus_dir));
        }
        let rest = url.strip_prefix("kafka://")?;
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        if brokers.is_empty() {
            return None;
        }
        let settings = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .filter(|(key, _)| !key.is_empty())
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self::Kafka(KafkaBus::new(brokers, settings)))
    }

    /// Creates the topic with `partitions` partitions unless it exists; returns its partition
    /// count. An existing topic with another count is an error: the stages track offsets per
    /// partition of the idcard's count, so a silently different one would lose partitions.
    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        match self {
            Self::Embedded(log) => log.ensure_topic(topic, partitions),
            Self::Kafka(kafka) => kafka.ensure_topic(topic, partitions),
        }
    }

    /// Partition count of an existing topic.
    pub fn partitions(&self, topic: &str) -> Result<u32> {
        match self {
            Self::Embedded(log) => log.partitions(topic),
            Self::Kafka(kafka) => kafka.partitions(topic),
        }
    }

    /// The right to produce to `topic` alone, held until dropped: on the embedded log a lock
    /// file in the topic's folder, so that two producers never interleave their messages (a
    /// second one waits, see [`crate::lease`]); nothing on Kafka, whose producers are
    /// independent by design.
    pub fn producer_lease(&self, topic: &str) -> Result<crate::lease::Lease> {
        match self {
            Self::Embedded(log) => log.producer_lease(topic),
            Self::Kafka(_) => Ok(crate::lease::Lease::none()),
        }
    }

    /// Where each partition of an existing topic ends: the offset its next message takes.
    pub fn ends(&self, topic: &str) -> Result<Vec<u64>> {
        match self {
            Self::Embedded(log) => (0..log.partitions(topic)?)
                .map(|p| log.end_offset(topic, p))
                .collect(),
            Self::Kafka(kafka) => kafka.topic_ends(topic),
        }
    }

    /// Appends a batch; returns how many messages went to each partition.
    pub fn send(&self, topic: &str, records: &Batch) -> Result<Vec<u64>> {
        match self {
            Self::Embedded(log) => log.append(topic, records),
            Self::Kafka(kafka) => kafka.send(topic, records),
        }
    }

    /// Appends messages as columns (and empties `columns`): on the embedded log as they are,
    /// one block per partition; on Kafka as JSON messages. Returns how many messages went to
    /// each partition.
    pub fn send_columns(&self, topic: &str, columns: &mut Columns) -> Result<Vec<u64>> {
        let parts = columns.finish();
        match self {
            Self::Embedded(log) => log.append_columns(topic, &parts),
            Self::Kafka(kafka) => kafka.send(topic, &columns::to_frames(&parts)),
        }
    }
}

/// `actual`, the partition count of an existing topic, when it is the `declared` one.
fn same_count(topic: &str, declared: u32, actual: u32) -> Result<u32> {
    if actual != declared {
        return Err(Error::PartitionCount {
            topic: topic.to_owned(),
            declared,
            actual,
        });
    }
    Ok(actual)
}

/// Partition of a key: FNV-1a, stable across runs and platforms.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}
