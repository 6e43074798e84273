//! The embedded topic log: one folder per topic, two files per partition.
//!
//! `p<N>.log` holds one block per append to the partition, back to back, as a Kafka record batch
//! does: a header ([`BLOCK_HEADER`] bytes: `u32` compressed length, `u32` raw length, `u32`
//! message count, `u32` format, `u64` offset of the first message, the first 16 bytes of the
//! BLAKE3 hash of the compressed bytes), then the messages LZ4-compressed, in one of two formats:
//! frames (`u32` length of the rest, `i64` timestamp, `u32` key length, key, value: any message,
//! one at a time, as the gateway appends them) or columns (one Arrow IPC stream of one record
//! batch, [`super::columns`]: a producer's bulk appends). A partition may hold both.
//!
//! `p<N>.idx` holds, per offset, the `u64` byte position where that message's block starts. An
//! append writes and syncs the block first, then the index entries, so the index never points
//! to a block that is not whole; on open, the index entries a crash left out of the last block
//! are completed (a reader may already have seen its first ones) and log bytes past the last
//! indexed block are cut off. The offset of a message is its position in the index.
//!
//! `p<N>.start`, once a partition was released ([`EmbeddedLog::release`]), holds its first
//! offset still stored: the blocks below it are holes punched in `p<N>.log` (and the index
//! entries below it in `p<N>.idx`), so the disk space goes back while every offset and byte
//! position stays where it was. A read below it is [`Error::Released`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use deltalake::arrow::record_batch::RecordBatch;

use super::{Batch, Bytes, Error, Message, Result, columns, frames, partition_for};

/// What a read returns, block by block: framed messages, or a block of columns (its rows from
/// `first` on, sliced to the offsets asked for).
#[derive(Debug)]
pub enum Chunk {
    Messages(Vec<Message>),
    Columns {
        partition: u32,
        first: u64,
        batch: RecordBatch,
    },
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Messages(messages) => messages.len(),
            Chunk::Columns { batch, .. } => batch.num_rows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The messages one by one (a block of columns rendered as JSON values).
    pub fn into_messages(self) -> Vec<Message> {
        match self {
            Chunk::Messages(messages) => messages,
            Chunk::Columns {
                partition,
                first,
                batch,
            } => {
                let bytes = Bytes::from(columns::to_frames(&[batch]).bytes);
                (first..)
                    .zip(frames(&bytes))
                    .map(|(offset, frame)| {
                        let frame = frame.expect("a batch holds whole frames");
                        Message {
                            partition,
                            offset,
                            timestamp_ms: frame.timestamp_ms,
                            key: bytes.slice_ref(frame.key),
                            value: bytes.slice_ref(frame.value),
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The file-backed log rooted at a folder.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    root: PathBuf,
    /// Blocks of columns appended through this log (or a clone of it), until a read takes them.
    recent: Arc<Mutex<Recent>>,
}

/// Blocks of columns a log appended, kept as stored until a read in the same process takes
/// them: bronze follows the producer in the same run and reads each block soon after it is
/// appended, and reading it back from the file (the copy, the checksum, LZ4 and the IPC
/// decoding) was about 4% of a first delivery's CPU at scale 1. A read still reads each block's
/// header from the file and takes a kept block only when the header is the one written (same
/// start, first offset, count and checksum), so a log that another process rewrote is read from
/// the file. At most [`RECENT_BYTES`] are kept: a block that does not fit is read from the file.
/// Only a log told that it will be read in this process keeps any
/// ([`EmbeddedLog::keep_for_reads`]): `framework produce` alone keeps none.
#[derive(Debug, Default)]
struct Recent {
    /// Whether blocks are kept at all.
    keeping: bool,
    blocks: std::collections::VecDeque<RecentBlock>,
    bytes: usize,
}

#[derive(Debug)]
struct RecentBlock {
    topic: String,
    partition: u32,
    start: u64,
    /// The header written: a read takes the block only when it reads this header.
    header: BlockHeader,
    batch: RecordBatch,
    bytes: usize,
}

/// Most bytes of blocks [`Recent`] keeps. The producer runs up to a few tables ahead of bronze
/// in a run: at scale 1, 64 MiB kept 60 of the 81 blocks bronze read, 128 MiB all but one
/// (first delivery 2.44-2.59 s against 2.57-2.83 s without, peak 0.85-0.87 GiB against
/// 0.71-0.75 GiB).
const RECENT_BYTES: usize = 128 << 20;

impl Recent {
    /// Keeps `block` if it fits: a reader that lags takes the blocks in the order they were
    /// appended, so those kept first are the ones it needs first.
    fn keep(&mut self, block: RecentBlock) {
        if !self.keeping || self.bytes + block.bytes > RECENT_BYTES {
            return;
        }
        self.bytes += block.bytes;
        self.blocks.push_back(block);
    }

    /// The kept block of `topic`'s `partition` that starts at `start` with `header`; taken
    /// out when `whole` (the read reaches its last message).
    fn find(
        &mut self,
        topic: &str,
        partition: u32,
        start: u64,
        header: &BlockHeader,
        whole: bool,
    ) -> Option<RecordBatch> {
        let at = self.blocks.iter().position(|b| {
            b.start == start && b.partition == partition && b.topic == topic && b.header == *header
        })?;
        if !whole {
            return Some(self.blocks[at].batch.clone());
        }
        let block = self.blocks.remove(at)?;
        self.bytes -= block.bytes;
        Some(block.batch)
    }
}

impl EmbeddedLog {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            recent: Arc::default(),
        }
    }

    /// Keeps the blocks of columns this log (and its clones) appends from now on until a read
    /// takes them (see [`Recent`]): for a run in which bronze reads what the producer appends.
    pub fn keep_for_reads(&self) {
        self.recent
            .lock()
            .expect("no panic while holding the recent blocks")
            .keeping = true;
    }

    fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join(topic)
    }

    /// A file kept beside the topic's partitions, about its offsets (the gateway's
    /// idempotency keys): it goes wherever the topic goes.
    pub fn sidecar(&self, topic: &str, name: &str) -> PathBuf {
        self.topic_dir(topic).join(name)
    }

    fn io(topic: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            topic: topic.to_owned(),
            source,
        }
    }

    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        match self.partitions(topic) {
            Ok(existing) => return super::same_count(topic, partitions, existing),
            Err(Error::UnknownTopic { .. }) => {}
            Err(other) => return Err(other),
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
        // producers may create the topic at once: each writes its own files and renames them.
        self.replace_file(topic, "format", LOG_FORMAT)?;
        self.replace_file(topic, "partitions", &partitions.to_string())?;
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
        let dir = self.topic_dir(topic);
        let text = fs::read_to_string(dir.join("partitions")).map_err(|_| Error::UnknownTopic {
            topic: topic.to_owned(),
        })?;
        let format = fs::read_to_string(dir.join("format")).unwrap_or_default();
        if !READS.contains(&format.trim()) {
            return Err(Error::LogFormat {
                topic: topic.to_owned(),
                dir,
                found: format.trim().to_owned(),
            });
        }
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

    /// The number of messages and where the next block starts, when the partition's tail is
    /// whole: the last index entry points to a block that holds the last indexed message and
    /// ends where the log ends. Reads 8 bytes of the index and one block header, whatever the
    /// partition's size (an append after many small ones stays cheap).
    fn clean_tail(&self, topic: &str, partition: u32) -> Result<Option<(u64, u64)>> {
        let (log_path, idx_path) = self.paths(topic, partition);
        let idx_len = fs::metadata(&idx_path).map_err(Self::io(topic))?.len();
        let log_len = fs::metadata(&log_path).map_err(Self::io(topic))?.len();
        if idx_len == 0 {
            return Ok((log_len == 0).then_some((0, 0)));
        }
        if idx_len % 8 != 0 {
            return Ok(None);
        }
        let mut idx = File::open(&idx_path).map_err(Self::io(topic))?;
        let last = read_at(&mut idx, idx_len - 8, 8).map_err(Self::io(topic))?;
        let start = u64::from_le_bytes(last.try_into().expect("8 bytes"));
        let mut log = File::open(&log_path).map_err(Self::io(topic))?;
        Ok(
            read_block_header(&mut log, start, log_len).and_then(|header| {
                let whole = header.first + u64::from(header.count) == idx_len / 8
                    && start + header.len() == log_len;
                whole.then_some((idx_len / 8, log_len))
            }),
        )
    }

    /// Reads the index, repairing a torn tail: returns the number of messages and where the
    /// next block starts.
    fn recover(&self, topic: &str, partition: u32) -> Result<(u64, u64)> {
        if let Some(tail) = self.clean_tail(topic, partition)? {
            return Ok(tail);
        }
        let (log_path, idx_path) = self.paths(topic, partition);
        let bytes = fs::read(&idx_path).map_err(Self::io(topic))?;
        let mut starts: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let log_len = fs::metadata(&log_path).map_err(Self::io(topic))?.len();
        let mut log = File::open(&log_path).map_err(Self::io(topic))?;
        // The last indexed block, whole (anything else is a block the index never reached).
        // Never one below the released start: a release keeps the last block, so reaching
        // the holes means the log is damaged, and cutting it there would drop what it holds.
        let released = self.start_offset(topic, partition)?;
        let mut last = None;
        while let Some(&start) = starts.last() {
            match read_block_header(&mut log, start, log_len) {
                Some(header) if header.first < starts.len() as u64 => {
                    last = Some((start, header));
                    break;
                }
                // All of that block's entries go at once.
                _ => {
                    let kept = starts.partition_point(|&s| s < start);
                    if released > 0 && (kept as u64) < released {
                        return Err(Error::Corrupt {
                            topic: topic.to_owned(),
                            partition,
                            offset: kept as u64,
                            reason: format!(
                                "no whole block at the end of the log after offset {released}, where its released part starts"
                            ),
                        });
                    }
                    starts.truncate(kept);
                }
            }
        }
        let mut index_len = starts.len() as u64;
        let mut log_end = 0;
        if let Some((start, header)) = last {
            // A crash between the index entries of one block: complete them.
            index_len = header.first + u64::from(header.count);
            starts.resize(index_len as usize, start);
            log_end = start + header.len();
        }
        if index_len * 8 != bytes.len() as u64 {
            let entries: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut idx = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&idx_path)
                .map_err(Self::io(topic))?;
            idx.write_all(&entries).map_err(Self::io(topic))?;
            idx.sync_data().map_err(Self::io(topic))?;
        }
        if log_len > log_end {
            let log = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(Self::io(topic))?;
            log.set_len(log_end).map_err(Self::io(topic))?;
        }
        Ok((index_len, log_end))
    }

    /// Appends framed messages, each partition's share as one block.
    pub fn append(&self, topic: &str, batch: &Batch) -> Result<Vec<u64>> {
        let partitions = self.partitions(topic)?;
        let mut by_partition: Vec<Vec<&[u8]>> = vec![Vec::new(); partitions as usize];
        for message in batch.iter() {
            by_partition[partition_for(message.key, partitions) as usize].push(message.frame);
        }
        let blocks = by_partition
            .iter()
            .map(|frames| (!frames.is_empty()).then(|| (frames.len(), frames.concat())))
            .collect();
        let appended = self.append_blocks(topic, FORMAT_FRAMES, blocks)?;
        Ok(Appended::counts(&appended))
    }

    /// Appends messages as columns, one record batch per partition ([`super::Columns::finish`]),
    /// each non-empty one as one block.
    pub fn append_columns(&self, topic: &str, parts: &[RecordBatch]) -> Result<Vec<u64>> {
        let partitions = self.partitions(topic)?;
        if parts.len() != partitions as usize {
            return Err(Error::PartitionCount {
                topic: topic.to_owned(),
                declared: parts.len() as u32,
                actual: partitions,
            });
        }
        self.upgrade_format(topic)?;
        let io = |e: String| Self::io(topic)(std::io::Error::other(e));
        // Each partition's block, and its batch as stored (kept for a reader in this process).
        let mut blocks = Vec::with_capacity(parts.len());
        let mut stored = Vec::with_capacity(parts.len());
        for batch in parts {
            if batch.num_rows() == 0 {
                blocks.push(None);
                stored.push(None);
                continue;
            }
            columns::check(batch).map_err(io)?;
            let (batch, raw) = columns::encode(batch).map_err(|e| io(e.to_string()))?;
            blocks.push(Some((batch.num_rows(), raw)));
            stored.push(Some(batch));
        }
        let appended = self.append_blocks(topic, FORMAT_COLUMNS, blocks)?;
        let mut recent = self
            .recent
            .lock()
            .expect("no panic while holding the recent blocks");
        for (partition, (appended, batch)) in appended.iter().zip(stored).enumerate() {
            if let (Some(appended), Some(batch)) = (appended, batch) {
                recent.keep(RecentBlock {
                    topic: topic.to_owned(),
                    partition: partition as u32,
                    start: appended.start,
                    header: appended.header.clone(),
                    bytes: batch.get_array_memory_size(),
                    batch,
                });
            }
        }
        Ok(Appended::counts(&appended))
    }

    /// Marks a topic written by the version before blocks of columns as this version's: that
    /// version would take such a block for a torn write and cut it off.
    fn upgrade_format(&self, topic: &str) -> Result<()> {
        let path = self.topic_dir(topic).join("format");
        let format = fs::read_to_string(&path).map_err(Self::io(topic))?;
        if format.trim() != LOG_FORMAT {
            self.replace_file(topic, "format", LOG_FORMAT)?;
        }
        Ok(())
    }

    /// Writes `content` as the topic's file `file` at once (a temporary file of this writer's
    /// own, renamed): a reader or another writer never sees it half written.
    fn replace_file(&self, topic: &str, file: &str, content: &str) -> Result<()> {
        let dir = self.topic_dir(topic);
        let tmp = dir.join(format!(
            "{file}.{}-{:x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::write(&tmp, content).map_err(Self::io(topic))?;
        fs::rename(&tmp, dir.join(file)).map_err(Self::io(topic))
    }

    /// Appends one block per partition that has one: `(messages, raw bytes)` in `format`.
    /// Returns where each went.
    fn append_blocks(
        &self,
        topic: &str,
        format: u32,
        blocks: Vec<Option<(usize, Vec<u8>)>>,
    ) -> Result<Vec<Option<Appended>>> {
        let mut appended: Vec<Option<Appended>> = (0..blocks.len()).map(|_| None).collect();
        for (partition, block) in blocks.iter().enumerate() {
            let Some((count, raw)) = block else {
                continue;
            };
            let partition = partition as u32;
            let (first, start) = self.recover(topic, partition)?;
            let (header, body) = encode_block(raw, *count, format, first);
            let (log_path, idx_path) = self.paths(topic, partition);
            let mut log = OpenOptions::new()
                .append(true)
                .open(&log_path)
                .map_err(Self::io(topic))?;
            // Header and body written apart (not copied into one buffer): a crash between them
            // leaves a torn block, which the next append cuts off as any other.
            log.write_all(&header.to_bytes()).map_err(Self::io(topic))?;
            log.write_all(&body).map_err(Self::io(topic))?;
            log.sync_data().map_err(Self::io(topic))?;
            let index: Vec<u8> = std::iter::repeat_n(start.to_le_bytes(), *count)
                .flatten()
                .collect();
            let mut idx = OpenOptions::new()
                .append(true)
                .open(&idx_path)
                .map_err(Self::io(topic))?;
            idx.write_all(&index).map_err(Self::io(topic))?;
            idx.sync_data().map_err(Self::io(topic))?;
            appended[partition as usize] = Some(Appended { start, header });
            if blocks[partition as usize + 1..].iter().any(Option::is_some) {
                crate::fault::crash_point("log-between-partitions");
            }
        }
        Ok(appended)
    }

    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        self.partitions(topic)?;
        let (_, idx_path) = self.paths(topic, partition);
        let len = fs::metadata(idx_path).map_err(Self::io(topic))?.len();
        Ok(len / 8)
    }

    /// Up to `max` messages of a partition from `offset` on, one by one (blocks of columns
    /// rendered as JSON values).
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let chunks = self.read_chunks(topic, partition, offset, max)?;
        Ok(chunks.into_iter().flat_map(Chunk::into_messages).collect())
    }

    /// Up to `max` messages of a partition from `offset` on, block by block as stored.
    /// [`Error::Released`] below the partition's start ([`EmbeddedLog::release`]).
    pub fn read_chunks(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Chunk>> {
        let released = |start: u64| Error::Released {
            topic: topic.to_owned(),
            partition,
            offset,
            start,
        };
        let start = self.start_offset(topic, partition)?;
        if offset < start {
            return Err(released(start));
        }
        match self.read_stored(topic, partition, offset, max) {
            // Released while this read went on: what it read were holes.
            Err(corrupt @ Error::Corrupt { .. }) => match self.start_offset(topic, partition)? {
                start if offset < start => Err(released(start)),
                _ => Err(corrupt),
            },
            read => read,
        }
    }

    /// The first offset of `topic`'s `partition` still stored: 0 until a release.
    pub fn start_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        let path = self.topic_dir(topic).join(format!("p{partition}.start"));
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| Error::Corrupt {
                topic: topic.to_owned(),
                partition,
                offset: 0,
                reason: format!("{} does not hold an offset: {text:?}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Self::io(topic)(e)),
        }
    }

    /// Gives the disk space of `topic`'s `partition` below offset `below` back: the whole
    /// blocks before the one holding `below` (or, past the end, before the last block: a
    /// partition always keeps its last block, which a later append's tail check reads).
    /// Records the new start first (`p<N>.start`), then punches the bytes below it out of the
    /// log and the index (`fallocate`, keeping each file's size and so every position). A crash
    /// in between leaves bytes that the next release punches; a file system that cannot punch
    /// holes keeps them (with a warning). Reads only the index and block headers below the
    /// end, and writes only below them, so it runs beside an append (releases of a topic take
    /// turns under `release.lock`). Returns the bytes the disk gave back.
    pub fn release(&self, topic: &str, partition: u32, below: u64) -> Result<u64> {
        // One release of a topic at a time (the gateway's upkeep and a `framework vacuum`),
        // so that a start never moves back.
        let _releasing = crate::lease::take(
            &self.topic_dir(topic).join("release.lock"),
            crate::lease::timeout(),
        )
        .map_err(|source| Error::Lease {
            topic: topic.to_owned(),
            source,
        })?;
        let end = self.end_offset(topic, partition)?;
        let Some(last) = end.checked_sub(1) else {
            return Ok(0);
        };
        let target = below.min(last);
        let (log_path, idx_path) = self.paths(topic, partition);
        // Read (the entry and the header) and punched through the same handles.
        let open = |path: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(Self::io(topic))
        };
        let (mut log, mut idx) = (open(&log_path)?, open(&idx_path)?);
        let entry = read_at(&mut idx, target * 8, 8).map_err(Self::io(topic))?;
        let block_start = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
        let log_len = log.metadata().map_err(Self::io(topic))?.len();
        let header = read_block_header(&mut log, block_start, log_len)
            .filter(|h| h.first <= target && target < h.first + u64::from(h.count))
            .ok_or_else(|| Error::Corrupt {
                topic: topic.to_owned(),
                partition,
                offset: target,
                reason: "the index points to a block that does not hold it".to_owned(),
            })?;
        let start = header.first;
        if start <= self.start_offset(topic, partition)? {
            return Ok(0);
        }
        let page = |bytes: u64| bytes / PUNCH_UNIT * PUNCH_UNIT;
        let (log_bytes, idx_bytes) = (page(block_start), page(start * 8));
        let allocated = || -> Result<u64> {
            use std::os::unix::fs::MetadataExt;
            let blocks = |file: &File| file.metadata().map(|m| m.blocks() * 512);
            Ok(blocks(&log).map_err(Self::io(topic))? + blocks(&idx).map_err(Self::io(topic))?)
        };
        let before = allocated()?;
        self.replace_file(topic, &format!("p{partition}.start"), &start.to_string())?;
        crate::fault::crash_point("log-release-before-punch");
        let punched = punch(&log, log_bytes).map_err(Self::io(topic))?
            && punch(&idx, idx_bytes).map_err(Self::io(topic))?;
        if !punched {
            tracing::warn!(
                topic,
                partition,
                "the file system of the embedded log cannot punch holes: its consumed messages keep their disk space"
            );
            return Ok(0);
        }
        // What the disk gave back (an append beside this one may have taken some meanwhile).
        let released = before.saturating_sub(allocated()?);
        tracing::debug!(topic, partition, start, released, "log: released");
        Ok(released)
    }

    fn read_stored(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Chunk>> {
        let end = self.end_offset(topic, partition)?;
        if offset >= end || max == 0 {
            return Ok(Vec::new());
        }
        let (log_path, idx_path) = self.paths(topic, partition);
        let count = (end - offset).min(max as u64);
        let corrupt = |at: u64, reason: &str| Error::Corrupt {
            topic: topic.to_owned(),
            partition,
            offset: at,
            reason: reason.to_owned(),
        };
        let mut idx = File::open(&idx_path).map_err(Self::io(topic))?;
        let index = read_at(&mut idx, offset * 8, count as usize * 8)
            .map_err(|e| corrupt(offset, &format!("reading the index: {e}")))?;
        let mut starts: Vec<u64> = index
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        starts.dedup();
        let mut log = File::open(&log_path).map_err(Self::io(topic))?;
        let log_len = log.metadata().map_err(Self::io(topic))?.len();
        let wanted = offset..offset + count;
        let mut out = Vec::with_capacity(starts.len());
        let mut read = 0;
        for start in starts {
            let at = offset + read;
            let header = read_block_header(&mut log, start, log_len)
                .ok_or_else(|| corrupt(at, "block header past the end of the log"))?;
            // The block's messages that were asked for.
            let end = header.first + u64::from(header.count);
            let from = wanted.start.max(header.first);
            let to = wanted.end.min(end);
            let asked = |batch: RecordBatch| Chunk::Columns {
                partition,
                first: from,
                batch: batch.slice(
                    (from - header.first) as usize,
                    to.saturating_sub(from) as usize,
                ),
            };
            let recent = (header.format == FORMAT_COLUMNS)
                .then(|| {
                    self.recent
                        .lock()
                        .expect("no panic while holding the recent blocks")
                        .find(topic, partition, start, &header, to == end)
                })
                .flatten();
            if let Some(batch) = recent {
                let chunk = asked(batch);
                read += chunk.len() as u64;
                out.push(chunk);
                continue;
            }
            let body = read_at(
                &mut log,
                start + BLOCK_HEADER as u64,
                header.compressed as usize,
            )
            .map_err(|e| corrupt(at, &format!("reading the log: {e}")))?;
            if blake3::hash(&body).as_bytes()[..16] != header.hash {
                return Err(corrupt(at, "block checksum does not match"));
            }
            let mut raw = vec![0; header.raw as usize];
            match lz4_flex::block::decompress_into(&body, &mut raw) {
                Ok(n) if n == raw.len() => {}
                _ => return Err(corrupt(at, "block does not decompress")),
            }
            let miscounted = || {
                corrupt(
                    at,
                    "block holds another number of messages than its header says",
                )
            };
            let chunk = if header.format == FORMAT_COLUMNS {
                let batch = columns::decode(raw).map_err(|reason| corrupt(at, &reason))?;
                if batch.num_rows() != header.count as usize {
                    return Err(miscounted());
                }
                asked(batch)
            } else {
                let raw = Bytes::from(raw);
                let mut messages = Vec::with_capacity(to.saturating_sub(from) as usize);
                let mut in_block = 0;
                for (message, frame) in (header.first..).zip(frames(&raw)) {
                    let frame = frame.map_err(|reason| corrupt(message, reason))?;
                    in_block += 1;
                    if wanted.contains(&message) {
                        messages.push(Message {
                            partition,
                            offset: message,
                            timestamp_ms: frame.timestamp_ms,
                            key: raw.slice_ref(frame.key),
                            value: raw.slice_ref(frame.value),
                        });
                    }
                }
                if in_block != header.count {
                    return Err(miscounted());
                }
                Chunk::Messages(messages)
            };
            read += chunk.len() as u64;
            out.push(chunk);
        }
        if read != count {
            return Err(corrupt(
                offset,
                "the index and the blocks disagree on the messages",
            ));
        }
        Ok(out)
    }
}

/// Bytes punched out at a time: whole pages, so that a hole frees whole blocks of the disk.
const PUNCH_UNIT: u64 = 4096;

/// Punches the first `bytes` of `file` out (a hole that reads as zeros; the file keeps its
/// size): `false` when the file system cannot.
fn punch(file: &File, bytes: u64) -> std::io::Result<bool> {
    if bytes == 0 {
        return Ok(true);
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            bytes,
        ) {
            Ok(()) => Ok(true),
            // Not this file system (or kernel): the bytes stay, the data is safe either way.
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL,
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, bytes);
        Ok(false)
    }
}

/// The log format of the topics this version writes, in each topic's `format` file: blocks of
/// frames or of columns.
const LOG_FORMAT: &str = "blocks-lz4-2";

/// The log formats this version reads: its own, and the one before (blocks of frames only).
const READS: [&str; 2] = ["blocks-lz4-1", LOG_FORMAT];

/// Bytes of a block header.
pub const BLOCK_HEADER: usize = 4 + 4 + 4 + 4 + 8 + 16;

/// Blocks of framed messages, LZ4 block compression.
const FORMAT_FRAMES: u32 = 1;
/// Blocks of messages as columns (an Arrow IPC stream), LZ4 block compression.
const FORMAT_COLUMNS: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockHeader {
    compressed: u32,
    raw: u32,
    count: u32,
    format: u32,
    first: u64,
    hash: [u8; 16],
}

impl BlockHeader {
    /// Bytes of the block, header included.
    fn len(&self) -> u64 {
        BLOCK_HEADER as u64 + u64::from(self.compressed)
    }

    /// The header as written at the block's start (see the module's documentation).
    fn to_bytes(&self) -> [u8; BLOCK_HEADER] {
        let mut bytes = [0u8; BLOCK_HEADER];
        for (at, field) in [self.compressed, self.raw, self.count, self.format]
            .into_iter()
            .enumerate()
        {
            bytes[at * 4..at * 4 + 4].copy_from_slice(&field.to_le_bytes());
        }
        bytes[16..24].copy_from_slice(&self.first.to_le_bytes());
        bytes[24..].copy_from_slice(&self.hash);
        bytes
    }

    fn from_bytes(bytes: &[u8; BLOCK_HEADER]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Self {
            compressed: u32_at(0),
            raw: u32_at(4),
            count: u32_at(8),
            format: u32_at(12),
            first: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            hash: bytes[24..40].try_into().expect("16 bytes"),
        }
    }
}

/// `raw`, `count` messages in `format`, as one block whose first message has offset `first`:
/// its header and its body.
fn encode_block(raw: &[u8], count: usize, format: u32, first: u64) -> (BlockHeader, Vec<u8>) {
    let body = lz4_flex::block::compress(raw);
    let header = BlockHeader {
        compressed: body.len() as u32,
        raw: raw.len() as u32,
        count: count as u32,
        format,
        first,
        hash: blake3::hash(&body).as_bytes()[..16]
            .try_into()
            .expect("16 bytes"),
    };
    (header, body)
}

/// Where a block went: the byte it starts at, and its header.
struct Appended {
    start: u64,
    header: BlockHeader,
}

impl Appended {
    /// Messages appended to each partition (0 where no block went).
    fn counts(appended: &[Option<Self>]) -> Vec<u64> {
        appended
            .iter()
            .map(|a| a.as_ref().map_or(0, |a| u64::from(a.header.count)))
            .collect()
    }
}

/// The header of the block at `start`, when the block is whole within `log_len` bytes.
fn read_block_header(log: &mut File, start: u64, log_len: u64) -> Option<BlockHeader> {
    let mut bytes = [0u8; BLOCK_HEADER];
    log.seek(SeekFrom::Start(start)).ok()?;
    log.read_exact(&mut bytes).ok()?;
    let header = BlockHeader::from_bytes(&bytes);
    ([FORMAT_FRAMES, FORMAT_COLUMNS].contains(&header.format) && start + header.len() <= log_len)
        .then_some(header)
}

/// `len` bytes of `file` from `position`.
fn read_at(file: &mut File, position: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(position))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}
