//! The embedded topic log: one folder per topic, two files per partition.
//!
//! `p<N>.log` holds records back to back: `u32` length (little endian) then the record
//! (`i64` timestamp, `u32` key length, key, value). `p<N>.idx` holds, per offset, the `u64` byte
//! position where that record ends. An append writes and syncs the log first, then the index, so
//! the index never points past the log; on open, log bytes past the last indexed end (a crash
//! mid-append) are cut off. The offset of a message is its position in the index.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Error, Message, Record, Result, partition_for};

/// The file-backed log rooted at a folder.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    root: PathBuf,
}

impl EmbeddedLog {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join(topic)
    }

    fn io(topic: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            topic: topic.to_owned(),
            source,
        }
    }

    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        if let Ok(existing) = self.partitions(topic) {
            return super::same_count(topic, partitions, existing);
        }
        let dir = self.topic_dir(topic);
        fs::create_dir_all(&dir).map_err(Self::io(topic))?;
        for partition in 0..partitions {
            for ext in ["log", "idx"] {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("p{partition}.{ext}")))
                    .map_err(Self::io(topic))?;
            }
        }
        // The partition count is written last: a topic exists once this file does. Two
        // producers may create the topic at once: each writes its own file and renames it.
        let tmp = dir.join(format!(
            "partitions.{}-{:x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::write(&tmp, partitions.to_string()).map_err(Self::io(topic))?;
        fs::rename(&tmp, dir.join("partitions")).map_err(Self::io(topic))?;
        Ok(partitions)
    }

    /// See [`super::Bus::producer_lease`].
    pub fn producer_lease(&self, topic: &str) -> Result<crate::lease::Lease> {
        let path = self.topic_dir(topic).join("producer.lock");
        crate::lease::take(&path, crate::lease::timeout()).map_err(|source| Error::Lease {
            topic: topic.to_owned(),
            source,
        })
    }

    pub fn partitions(&self, topic: &str) -> Result<u32> {
        let text = fs::read_to_string(self.topic_dir(topic).join("partitions")).map_err(|_| {
            Error::UnknownTopic {
                topic: topic.to_owned(),
            }
        })?;
        text.trim().parse().map_err(|_| Error::UnknownTopic {
            topic: topic.to_owned(),
        })
    }

    fn paths(&self, topic: &str, partition: u32) -> (PathBuf, PathBuf) {
        let dir = self.topic_dir(topic);
        (
            dir.join(format!("p{partition}.log")),
            dir.join(format!("p{partition}.idx")),
        )
    }

    /// Reads the index, repairing a torn tail: returns the record end positions.
    fn recover(&self, topic: &str, partition: u32) -> Result<Vec<u64>> {
        let (log_path, idx_path) = self.paths(topic, partition);
        let bytes = fs::read(&idx_path).map_err(Self::io(topic))?;
        let whole = bytes.len() / 8 * 8;
        let mut ends: Vec<u64> = bytes[..whole]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let log_len = fs::metadata(&log_path).map_err(Self::io(topic))?.len();
        while ends.last().is_some_and(|end| *end > log_len) {
            ends.pop();
        }
        let indexed = ends.last().copied().unwrap_or(0);
        if whole != bytes.len() || ends.len() * 8 != whole {
            let idx = OpenOptions::new()
                .write(true)
                .open(&idx_path)
                .map_err(Self::io(topic))?;
            idx.set_len(ends.len() as u64 * 8)
                .map_err(Self::io(topic))?;
        }
        if log_len > indexed {
            let log = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(Self::io(topic))?;
            log.set_len(indexed).map_err(Self::io(topic))?;
        }
        Ok(ends)
    }

    pub fn append(&self, topic: &str, records: &[Record]) -> Result<Vec<u64>> {
        let partitions = self.partitions(topic)?;
        let mut by_partition: Vec<Vec<&Record>> = vec![Vec::new(); partitions as usize];
        for record in records {
            by_partition[partition_for(&record.key, partitions) as usize].push(record);
        }
        let mut counts = vec![0; partitions as usize];
        for (partition, batch) in by_partition.iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let partition = partition as u32;
            let ends = self.recover(topic, partition)?;
            let mut position = ends.last().copied().unwrap_or(0);
            let (log_path, idx_path) = self.paths(topic, partition);
            let log = OpenOptions::new()
                .append(true)
                .open(&log_path)
                .map_err(Self::io(topic))?;
            let mut log = BufWriter::with_capacity(1 << 20, log);
            let mut index = Vec::with_capacity(batch.len() * 8);
            for record in batch {
                let body_len = 8 + 4 + record.key.len() + record.value.len();
                log.write_all(&(body_len as u32).to_le_bytes())
                    .map_err(Self::io(topic))?;
                log.write_all(&record.timestamp_ms.to_le_bytes())
                    .map_err(Self::io(topic))?;
                log.write_all(&(record.key.len() as u32).to_le_bytes())
                    .map_err(Self::io(topic))?;
                log.write_all(&record.key).map_err(Self::io(topic))?;
                log.write_all(&record.value).map_err(Self::io(topic))?;
                position += 4 + body_len as u64;
                index.extend_from_slice(&position.to_le_bytes());
            }
            let log = log
                .into_inner()
                .map_err(|e| Self::io(topic)(e.into_error()))?;
            log.sync_data().map_err(Self::io(topic))?;
            let mut idx = OpenOptions::new()
                .append(true)
                .open(&idx_path)
                .map_err(Self::io(topic))?;
            idx.write_all(&index).map_err(Self::io(topic))?;
            idx.sync_data().map_err(Self::io(topic))?;
            counts[partition as usize] = batch.len() as u64;
        }
        Ok(counts)
    }

    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        self.partitions(topic)?;
        let (_, idx_path) = self.paths(topic, partition);
        let len = fs::metadata(idx_path).map_err(Self::io(topic))?.len();
        Ok(len / 8)
    }

    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let end = self.end_offset(topic, partition)?;
        if offset >= end || max == 0 {
            return Ok(Vec::new());
        }
        let (log_path, idx_path) = self.paths(topic, partition);
        let start = if offset == 0 {
            0
        } else {
            read_u64_at(&idx_path, (offset - 1) * 8, topic)?
        };
        let mut log = File::open(&log_path).map_err(Self::io(topic))?;
        log.seek(SeekFrom::Start(start)).map_err(Self::io(topic))?;
        let mut log = BufReader::with_capacity(1 << 20, log);
        let count = (end - offset).min(max as u64);
        let mut out = Vec::with_capacity(count as usize);
        let corrupt = |at: u64, reason: &str| Error::Corrupt {
            topic: topic.to_owned(),
            partition,
            offset: at,
            reason: reason.to_owned(),
        };
        for at in offset..offset + count {
            let mut len = [0u8; 4];
            log.read_exact(&mut len)
                .map_err(|_| corrupt(at, "truncated length"))?;
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            log.read_exact(&mut body)
                .map_err(|_| corrupt(at, "truncated body"))?;
            if body.len() < 12 {
                return Err(corrupt(at, "record shorter than its header"));
            }
            let timestamp_ms = i64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
            let key_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
            if 12 + key_len > body.len() {
                return Err(corrupt(at, "key longer than record"));
            }
            let value = body.split_off(12 + key_len);
            let key = body[12..].to_vec();
            out.push(Message {
                partition,
                offset: at,
                timestamp_ms,
                key,
                value,
            });
        }
        Ok(out)
    }
}

fn read_u64_at(path: &Path, position: u64, topic: &str) -> Result<u64> {
    let mut file = File::open(path).map_err(EmbeddedLog::io(topic))?;
    file.seek(SeekFrom::Start(position))
        .map_err(EmbeddedLog::io(topic))?;
    let mut buf = [0u8; 8];
    file.read_exact(&mut buf).map_err(EmbeddedLog::io(topic))?;
    Ok(u64::from_le_bytes(buf))
}
