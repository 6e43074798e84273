//! CSV -> topic, simulating a live stream as the idcard's `producer` section describes: late
//! messages (timestamp moved into the past), duplicates (sent twice) and, when streaming, a random
//! pause between messages. All randomness comes from `--seed`, so runs are reproducible.
//!
//! Message value: a JSON object with one field per schema column (cells as strings, empty cells
//! as null), plus `_ingestion_timestamp` (RFC 3339, UTC) and `_source_line`. A broken source
//! record travels as `{"_raw": ..., "_error": ...}` so that bronze can reject it with its reason.
//! Key: the primary-key cells joined by `|`.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[cfg(test)]
use crate::bus::Record;
use crate::bus::{Batch, Bus};
use crate::idcard::Table;

use super::Result;
#[cfg(test)]
use super::SourceRow;
use super::csv::{CsvRecords, RecordRef};

/// How to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Pause between messages as the idcard says (a live stream); off for bulk loads.
    pub delay: bool,
    /// Simulate a live stream's late and duplicate messages as the idcard's `producer` section
    /// says; off, every source row is sent once with the current time (a faithful load).
    pub simulate: bool,
    /// Seed of the simulation.
    pub seed: u64,
    /// Stop after this many source rows.
    pub limit: Option<usize>,
}

/// What a produce run did.
#[derive(Debug, Clone, Default)]
pub struct ProduceStats {
    /// Source records read (broken ones included).
    pub rows_read: u64,
    /// Messages sent (duplicates included).
    pub messages: u64,
    pub late: u64,
    pub duplicates: u64,
    pub broken: u64,
    pub seconds: f64,
}

/// Messages per append in bulk mode (each append syncs the log once per partition).
const BATCH: usize = 100_000;
/// Room for a batch's messages, so that the buffer rarely grows.
const BATCH_BYTES: usize = BATCH * 256;

/// Produces `table`'s source file from `data_dir` onto its topic, record by record (memory stays
/// flat whatever the file's size). `progress` gets the source bytes read and the file's size.
pub fn produce(
    bus: &Bus,
    table: &Table,
    data_dir: &Path,
    options: &ProduceOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<ProduceStats> {
    let started = Instant::now();
    let path = data_dir.join(&table.config.source.path);
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let mut records = CsvRecords::open(table, &path)?;
    bus.ensure_topic(table.topic(), table.config.topic.partitions)?;
    let _lease = bus.producer_lease(table.topic())?;
    let faithful = crate::idcard::config::ProducerConfig {
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        ..table.config.producer.clone()
    };
    let simulation = if options.simulate {
        &table.config.producer
    } else {
        &faithful
    };
    let late_fraction = simulation.late_fraction.clamp(0.0, 1.0);
    let duplicate_fraction = simulation.duplicate_fraction.clamp(0.0, 1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ fnv(table.name().as_bytes()));
    let encoder = Encoder::new(table);
    let mut stats = ProduceStats::default();
    // Reading and encoding here, appending on a second thread: the two overlap.
    let send_s = std::thread::scope(|scope| {
        let (batches, to_send) = std::sync::mpsc::sync_channel::<Batch>(1);
        let sender = scope.spawn(move || {
            let mut busy = 0.0;
            for batch in to_send {
                let sending = Instant::now();
                bus.send(table.topic(), &batch)?;
                busy += sending.elapsed().as_secs_f64();
            }
            Ok::<_, super::Error>(busy)
        });
        let handed = |pending: &mut Batch, stats: &mut ProduceStats, read: u64| {
            stats.messages += pending.len() as u64;
            let batch = std::mem::replace(pending, Batch::with_capacity(BATCH_BYTES));
            progress(read, size);
            // Fails only when the sender stopped on an error, which joining it returns.
            batches.send(batch).is_ok()
        };
        let mut pending = Batch::with_capacity(BATCH_BYTES);
        let mut clock = Clock::now();
        let read = loop {
            if options
                .limit
                .is_some_and(|limit| stats.rows_read >= limit as u64)
            {
                break Ok(());
            }
            let record = match records.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            stats.rows_read += 1;
            let mut at = clock.at;
            if late_fraction > 0.0 && rng.random_bool(late_fraction) {
                let [lo, hi] = simulation.late_lag_s;
                at -= Duration::from_secs(rng.random_range(lo..=hi.max(lo)));
                stats.late += 1;
            }
            if at == clock.at {
                encoder.encode(&mut pending, &record, &clock.text, at);
            } else {
                encoder.encode(&mut pending, &record, &rfc3339_micros(at), at);
            }
            if matches!(record, RecordRef::Broken { .. }) {
                stats.broken += 1;
            }
            if duplicate_fraction > 0.0 && rng.random_bool(duplicate_fraction) {
                stats.duplicates += 1;
                pending.repeat_last();
            }
            if options.delay || pending.len() >= BATCH {
                if !handed(&mut pending, &mut stats, records.position()) {
                    break Ok(());
                }
                if options.delay {
                    let [lo, hi] = simulation.delay_ms;
                    std::thread::sleep(Duration::from_millis(rng.random_range(lo..=hi.max(lo))));
                }
                clock = Clock::now();
            }
        };
        let read = read.and_then(|()| {
            if stats.rows_read == 0 && table.mode() == crate::idcard::Mode::Full {
                return Err(super::Error::EmptySnapshot {
                    path: path.clone(),
                    table: table.name().to_owned(),
                });
            }
            Ok(())
        });
        if read.is_ok() && !pending.is_empty() {
            handed(&mut pending, &mut stats, size);
        }
        drop(batches);
        // What was handed over is sent even when reading failed: those messages are whole.
        let sent = sender.join().expect("the sender thread does not panic");
        read?;
        sent
    })?;
    stats.seconds = started.elapsed().as_secs_f64();
    tracing::debug!(
        table = table.name(),
        seconds = stats.seconds,
        send_s,
        "produce: read, encoded and sent"
    );
    Ok(stats)
}

/// The send time of a batch, once as text: messages of one batch share it (a late message gets
/// its own).
struct Clock {
    at: DateTime<Utc>,
    text: String,
}

impl Clock {
    fn now() -> Self {
        let at = Utc::now();
        Self {
            at,
            text: rfc3339_micros(at),
        }
    }
}

/// Writes messages of one table: the JSON field names are encoded once.
pub struct Encoder {
    /// `"name":` per schema column, then the metadata fields.
    names: Vec<Vec<u8>>,
    /// Schema position of each key column.
    key: Vec<usize>,
}

impl Encoder {
    pub fn new(table: &Table) -> Self {
        let name = |n: &str| {
            let mut out = Vec::with_capacity(n.len() + 3);
            json_string(&mut out, n.as_bytes());
            out.push(b':');
            out
        };
        Self {
            names: table.columns.iter().map(|c| name(&c.name)).collect(),
            key: table
                .key()
                .iter()
                .map(|k| table.columns.iter().position(|c| &c.name == k).unwrap_or(0))
                .collect(),
        }
    }

    /// Appends one source record to `batch` as a message sent at `at` (`timestamp`: `at` as
    /// RFC 3339 text).
    pub fn encode(
        &self,
        batch: &mut Batch,
        record: &RecordRef<'_>,
        timestamp: &str,
        at: DateTime<Utc>,
    ) {
        let key = |key: &mut Vec<u8>| match record {
            RecordRef::Row { record, order, .. } => {
                for (i, &column) in self.key.iter().enumerate() {
                    if i > 0 {
                        key.push(b'|');
                    }
                    key.extend_from_slice(order.get(column).map_or(&[][..], |&at| &record[at]));
                }
            }
            RecordRef::Broken { line, .. } => {
                key.extend_from_slice(format!("_broken:{line}").as_bytes());
            }
        };
        let value = |value: &mut Vec<u8>| {
            use std::io::Write as _;
            value.push(b'{');
            match record {
                RecordRef::Row { record, order, .. } => {
                    for (name, &at) in self.names.iter().zip(order.iter()) {
                        value.extend_from_slice(name);
                        match &record[at] {
                            b"" => value.extend_from_slice(b"null"),
                            cell => json_string(value, cell),
                        }
                        value.push(b',');
                    }
                }
                RecordRef::Broken { raw, reason, .. } => {
                    for (name, text) in [("_raw", raw.as_str()), ("_error", reason.as_str())] {
                        json_string(value, name.as_bytes());
                        value.push(b':');
                        json_string(value, text.as_bytes());
                        value.push(b',');
                    }
                }
            }
            write!(
                value,
                "\"_source_line\":\"{}\",\"_ingestion_timestamp\":\"{timestamp}\"}}",
                record.line()
            )
            .expect("writing to a Vec");
        };
        batch.push_with(at.timestamp_millis(), key, value);
    }
}

#[cfg(test)]
/// One source row as a message (for tests and one-off callers; `produce` reuses an [`Encoder`]).
pub fn encode(table: &Table, row: &SourceRow, at: DateTime<Utc>) -> Record {
    let encoder = Encoder::new(table);
    let timestamp = rfc3339_micros(at);
    let mut batch = Batch::default();
    match row {
        SourceRow::Row { line, cells } => {
            let mut record = ::csv::ByteRecord::new();
            for cell in cells {
                record.push_field(cell.as_deref().unwrap_or("").as_bytes());
            }
            let order: Vec<usize> = (0..cells.len()).collect();
            let row = RecordRef::Row {
                line: *line,
                record: &record,
                order: &order,
            };
            encoder.encode(&mut batch, &row, &timestamp, at);
        }
        SourceRow::Broken { line, raw, reason } => {
            let row = RecordRef::Broken {
                line: *line,
                raw: raw.clone(),
                reason: reason.clone(),
            };
            encoder.encode(&mut batch, &row, &timestamp, at);
        }
    }
    let message = batch.iter().next().expect("one message");
    Record {
        key: message.key.to_vec(),
        value: message.value.to_vec(),
        timestamp_ms: message.timestamp_ms,
    }
}

/// Appends `text` (valid UTF-8) as a JSON string.
fn json_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    // Most cells need no escape: one pass that the compiler vectorises, then one copy.
    if !text.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        out.extend_from_slice(text);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&text[start..i]);
                out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
/// `2026-01-02T03:04:05.000000Z`, without chrono's format-string interpreter (hot path).
pub fn rfc3339_micros(at: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.timestamp_subsec_micros()
    )
}
