//! The topic bus between producers and bronze: the embedded log (the default, no server) or
//! Kafka, behind the same [`Bus`] enum.

mod embedded;
mod kafka;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use embedded::EmbeddedLog;
pub use kafka::{GroupMember, KafkaBus, StartOffsets};

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
        "topic {topic}: Kafka: {source}\n  hint: is the broker of --bus running and reachable?"
    )]
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
    #[error("topic {topic} partition {partition}: corrupt record at offset {offset}: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One message as stored on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub offset: u64,
    /// Message time, milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
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

    /// Appends records; returns how many were written per partition.
    pub fn send(&self, topic: &str, records: &[Record]) -> Result<Vec<u64>> {
        match self {
            Self::Embedded(log) => log.append(topic, records),
            Self::Kafka(kafka) => kafka.send(topic, records),
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
