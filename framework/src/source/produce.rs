//! CSV -> topic, simulating a live stream as the idcard's `producer` section describes: late
//! messages (timestamp moved into the past), duplicates (sent twice) and, when streaming, a random
//! pause between messages. All randomness comes from `--seed`, so runs are reproducible.
//!
//! Message value: one text field per schema column (empty cells as null), plus `_source_line`
//! and `_ingestion_timestamp` (RFC 3339, UTC). A broken source record travels with `_raw` and
//! `_error` set (and null cells) so that bronze can reject it with its reason. Key: the
//! primary-key cells joined by `|`. Messages are built as columns ([`Columns`]): blocks of
//! Arrow columns on the embedded log, `{"<column>":"<text>"|null,...,"_source_line":"<n>",
//! "_ingestion_timestamp":"<text>"}` on Kafka.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[cfg(test)]
use crate::bus::Record;
use std::sync::Arc;

use crate::bus::{Bus, Columns};
use crate::idcard::Table;
use crate::pii::Keyring;
use crate::pii::edge::{Edge, EdgeError, Outcome};

use super::Result;
#[cfg(test)]
use super::SourceRow;
use super::csv::RecordRef;

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
    /// The data keys of the table's PII columns (empty when no idcard declares PII).
    pub keys: Arc<Keyring>,
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
    /// Rows that broke a `warn` expectation on a PII column (checked here, at the edge).
    pub warnings: u64,
    pub seconds: f64,
}

/// Messages per append in bulk mode (each append syncs the log once per partition).
const BATCH: usize = 100_000;

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
    let mut records = super::Records::open(table, &path)?;
    let size = records
        .size()
        .unwrap_or_else(|| std::fs::metadata(&path).map_or(0, |m| m.len()));
    let partitions = bus.ensure_topic(table.topic(), table.config.topic.partitions)?;
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
    let mut encoder = Encoder::new(table, &options.keys);
    let mut stats = ProduceStats::default();
    // Reading and encoding here, appending on a second thread: the two overlap.
    let send_s = std::thread::scope(|scope| {
        let (batches, to_send) = std::sync::mpsc::sync_channel::<Columns>(1);
        let sender = scope.spawn(move || {
            let mut busy = 0.0;
            for mut batch in to_send {
                let sending = Instant::now();
                bus.send_columns(table.topic(), &mut batch)?;
                crate::fault::crash_point("produce-after-send");
                busy += sending.elapsed().as_secs_f64();
            }
            Ok::<_, super::Error>(busy)
        });
        let handed = |pending: &mut Columns, stats: &mut ProduceStats, read: u64| {
            stats.messages += pending.len() as u64;
            let batch = std::mem::replace(pending, pending.empty_like(BATCH));
            progress(read, size);
            // Fails only when the sender stopped on an error, which joining it returns.
            batches.send(batch).is_ok()
        };
        let mut pending = encoder.columns(partitions, BATCH);
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
            let late_text;
            let timestamp = if at == clock.at {
                &clock.text
            } else {
                late_text = rfc3339_micros(at);
                &late_text
            };
            if let Err(e) = encoder.encode(&mut pending, &record, timestamp, at) {
                break Err(e.into());
            }
            if matches!(record, RecordRef::Broken { .. }) {
                stats.broken += 1;
            }
            if duplicate_fraction > 0.0 && rng.random_bool(duplicate_fraction) {
                stats.duplicates += 1;
                if let Err(e) = encoder.encode(&mut pending, &record, timestamp, at) {
                    break Err(e.into());
                }
            }
            if options.delay || pending.len() >= BATCH {
                // The subject keys of these messages are on disk before the messages leave.
                if let Err(e) = encoder.sync() {
                    break Err(e.into());
                }
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
        let read = read.and_then(|()| encoder.sync().map_err(Into::into));
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
    for (rule, rows) in encoder.edge_warnings().into_iter().flatten() {
        stats.warnings += rows;
        tracing::warn!(
            table = table.name(),
            rule,
            rows,
            "rows break a warn expectation on a PII column (checked at the edge)"
        );
    }
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

/// The value's fields before the schema's columns (set for a broken record only) and after
/// them.
const BEFORE: [&str; 2] = ["_raw", "_error"];
const AFTER: [&str; 2] = ["_source_line", "_ingestion_timestamp"];

/// Turns source records of one table into messages as columns.
pub struct Encoder {
    /// The value's fields: `_raw`, `_error`, the schema's columns, `_source_line`,
    /// `_ingestion_timestamp`.
    fields: Vec<String>,
    /// Schema position of each key column.
    key: Vec<usize>,
    /// The key and the line number of the record at hand.
    key_text: String,
    line_text: String,
    /// The table's PII columns, encrypted here, before the topic (none: `None`).
    edge: Option<Edge>,
}

impl Encoder {
    pub fn new(table: &Table, keys: &Arc<Keyring>) -> Self {
        let fields = BEFORE
            .iter()
            .map(|f| (*f).to_owned())
            .chain(table.columns.iter().map(|c| c.name.clone()))
            .chain(AFTER.iter().map(|f| (*f).to_owned()))
            .collect();
        let edge = Edge::new(table, keys);
        Self {
            fields,
            key: table
                .key()
                .iter()
                .map(|k| table.columns.iter().position(|c| &c.name == k).unwrap_or(0))
                .collect(),
            key_text: String::new(),
            line_text: String::new(),
            edge,
        }
    }

    /// Syncs the subject keys made for the messages encoded so far (before they are sent).
    pub fn sync(&self) -> Result<(), EdgeError> {
        self.edge.as_ref().map_or(Ok(()), Edge::sync)
    }

    /// Rows that broke a `warn` expectation on a PII column (checked here), per rule.
    pub fn edge_warnings(&self) -> Option<&std::collections::BTreeMap<String, u64>> {
        self.edge.as_ref().map(|e| &e.warnings)
    }

    /// An empty batch of this table's messages for a topic of `partitions` partitions.
    pub fn columns(&self, partitions: u32, rows: usize) -> Columns {
        let fields: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        let key: Vec<&str> = self
            .key
            .iter()
            .map(|&at| fields[BEFORE.len() + at])
            .collect();
        Columns::new(&fields, partitions, rows).key_of(&key, "|")
    }

    /// Appends one source record to `batch` as a message sent at `at` (`timestamp`: `at` as
    /// RFC 3339 text). Fails only on a PII column's `fail` expectation or a missing data key.
    pub fn encode(
        &mut self,
        batch: &mut Columns,
        record: &RecordRef<'_>,
        timestamp: &str,
        at: DateTime<Utc>,
    ) -> Result<(), EdgeError> {
        use std::fmt::Write as _;
        self.line_text.clear();
        write!(self.line_text, "{}", record.line()).expect("writing to a String");
        self.key_text.clear();
        let meta = [Some(self.line_text.as_str()), Some(timestamp)];
        match record {
            RecordRef::Row {
                record: fields,
                order,
                line,
                ..
            } => {
                // Sliced from the record's text, which the reader checked once as UTF-8.
                let cell = |column: usize| record.cell(column);
                if let Some(edge) = &mut self.edge
                    && let Outcome::Reject(reason) =
                        edge.protect(*line, |c| Some(cell(c)).filter(|c| !c.is_empty()))?
                {
                    let raw = fields
                        .iter()
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join(",");
                    let raw = edge.seal_raw(&raw)?;
                    write!(self.key_text, "_broken:{line}").expect("writing to a String");
                    push_broken(&self.fields, batch, &self.key_text, &raw, &reason, meta, at);
                    return Ok(());
                }
                let edge = self.edge.as_ref();
                let value = |column: usize| match edge.and_then(|e| Some((e, e.slot(column)?))) {
                    Some((edge, slot)) => edge.cell(slot),
                    None => Some(cell(column)).filter(|c| !c.is_empty()),
                };
                for (i, &column) in self.key.iter().enumerate() {
                    if i > 0 {
                        self.key_text.push('|');
                    }
                    self.key_text.push_str(value(column).unwrap_or(""));
                }
                let cells = (0..order.len()).map(value);
                // Keyed by its key cells, joined as the batch declares ([`Encoder::columns`]).
                batch.push_own(
                    at.timestamp_millis(),
                    &self.key_text,
                    BEFORE.map(|_| None).into_iter().chain(cells).chain(meta),
                );
            }
            RecordRef::Broken {
                line, raw, reason, ..
            } => {
                write!(self.key_text, "_broken:{line}").expect("writing to a String");
                let sealed;
                let raw = match &self.edge {
                    Some(edge) => {
                        sealed = edge.seal_raw(raw)?;
                        sealed.as_str()
                    }
                    None => raw.as_str(),
                };
                push_broken(&self.fields, batch, &self.key_text, raw, reason, meta, at);
            }
        }
        Ok(())
    }
}

/// Appends a record that goes on as a reject: its text and the reason, null cells.
fn push_broken(
    fields: &[String],
    batch: &mut Columns,
    key: &str,
    raw: &str,
    reason: &str,
    meta: [Option<&str>; 2],
    at: DateTime<Utc>,
) {
    let cells = fields.len() - BEFORE.len() - AFTER.len();
    let nulls = std::iter::repeat_n(None, cells);
    batch.push(
        at.timestamp_millis(),
        key,
        [Some(raw), Some(reason)]
            .into_iter()
            .chain(nulls)
            .chain(meta),
    );
}

#[cfg(test)]
/// One source row as a message (for tests and one-off callers; `produce` reuses an [`Encoder`]).
pub fn encode(table: &Table, row: &SourceRow, at: DateTime<Utc>) -> Record {
    let mut encoder = Encoder::new(table, &Arc::default());
    let timestamp = rfc3339_micros(at);
    let mut batch = encoder.columns(1, 1);
    match row {
        SourceRow::Row { line, cells } => {
            let mut record = ::csv::ByteRecord::new();
            for cell in cells {
                record.push_field(cell.as_deref().unwrap_or("").as_bytes());
            }
            let order: Vec<usize> = (0..cells.len()).collect();
            let row = RecordRef::row(*line, &record, &order);
            encoder
                .encode(&mut batch, &row, &timestamp, at)
                .expect("no PII");
        }
        SourceRow::Broken { line, raw, reason } => {
            let row = RecordRef::Broken {
                line: *line,
                raw: raw.clone(),
                reason: reason.clone(),
            };
            encoder
                .encode(&mut batch, &row, &timestamp, at)
                .expect("no PII");
        }
    }
    let frames = crate::bus::columns::to_frames(&batch.finish());
    let message = frames.iter().next().expect("one message");
    Record {
        key: message.key.to_vec(),
        value: message.value.to_vec(),
        timestamp_ms: message.timestamp_ms,
    }
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
