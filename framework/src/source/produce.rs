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

use crate::bus::{Bus, Record};
use crate::idcard::Table;

use super::{Result, SourceRow, read_csv};

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

/// Produces `table`'s source file from `data_dir` onto its topic.
pub fn produce(
    bus: &Bus,
    table: &Table,
    data_dir: &Path,
    options: &ProduceOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<ProduceStats> {
    let started = Instant::now();
    let path = data_dir.join(&table.config.source.path);
    let mut rows = read_csv(table, &path)?;
    if rows.is_empty() && table.mode() == crate::idcard::Mode::Full {
        return Err(super::Error::EmptySnapshot {
            path,
            table: table.name().to_owned(),
        });
    }
    if let Some(limit) = options.limit {
        rows.truncate(limit);
    }
    tracing::debug!(
        table = table.name(),
        rows = rows.len(),
        seconds = started.elapsed().as_secs_f64(),
        "produce: source read"
    );
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
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ fnv(table.name().as_bytes()));
    let mut stats = ProduceStats {
        rows_read: rows.len() as u64,
        ..ProduceStats::default()
    };
    let total = rows.len() as u64;
    let mut pending: Vec<Record> = Vec::with_capacity(BATCH);
    for (i, row) in rows.iter().enumerate() {
        let mut now = Utc::now();
        if rng.random_bool(simulation.late_fraction.clamp(0.0, 1.0)) {
            let [lo, hi] = simulation.late_lag_s;
            now -= Duration::from_secs(rng.random_range(lo..=hi.max(lo)));
            stats.late += 1;
        }
        let record = encode(table, row, now);
        let copies = if rng.random_bool(simulation.duplicate_fraction.clamp(0.0, 1.0)) {
            stats.duplicates += 1;
            2
        } else {
            1
        };
        if matches!(row, SourceRow::Broken { .. }) {
            stats.broken += 1;
        }
        for _ in 0..copies {
            pending.push(record.clone());
        }
        if options.delay {
            let [lo, hi] = simulation.delay_ms;
            bus.send(table.topic(), &pending)?;
            stats.messages += pending.len() as u64;
            pending.clear();
            progress(i as u64 + 1, total);
            std::thread::sleep(Duration::from_millis(rng.random_range(lo..=hi.max(lo))));
        } else if pending.len() >= BATCH {
            bus.send(table.topic(), &pending)?;
            stats.messages += pending.len() as u64;
            pending.clear();
            progress(i as u64 + 1, total);
        }
    }
    bus.send(table.topic(), &pending)?;
    stats.messages += pending.len() as u64;
    progress(total, total);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// One source row as a message.
pub fn encode(table: &Table, row: &SourceRow, at: DateTime<Utc>) -> Record {
    let timestamp = rfc3339_micros(at);
    let mut value = Vec::with_capacity(256);
    value.push(b'{');
    let field = |value: &mut Vec<u8>, name: &str, cell: Option<&str>| {
        if value.len() > 1 {
            value.push(b',');
        }
        serde_json::to_writer(&mut *value, name).expect("writing to a Vec");
        value.push(b':');
        match cell {
            Some(text) => serde_json::to_writer(&mut *value, text).expect("writing to a Vec"),
            None => value.extend_from_slice(b"null"),
        }
    };
    let key = match row {
        SourceRow::Row { line, cells } => {
            for (column, cell) in table.columns.iter().zip(cells) {
                field(&mut value, &column.name, cell.as_deref());
            }
            field(&mut value, "_source_line", Some(&line.to_string()));
            let mut key = String::new();
            for (i, name) in table.key().iter().enumerate() {
                if i > 0 {
                    key.push('|');
                }
                let at = table
                    .columns
                    .iter()
                    .position(|c| &c.name == name)
                    .unwrap_or(0);
                key.push_str(cells[at].as_deref().unwrap_or(""));
            }
            key
        }
        SourceRow::Broken { line, raw, reason } => {
            field(&mut value, "_raw", Some(raw));
            field(&mut value, "_error", Some(reason));
            field(&mut value, "_source_line", Some(&line.to_string()));
            format!("_broken:{line}")
        }
    };
    field(&mut value, "_ingestion_timestamp", Some(&timestamp));
    value.push(b'}');
    Record {
        key: key.into_bytes(),
        value,
        timestamp_ms: at.timestamp_millis(),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `2026-01-02T03:04:05.000000Z`, without chrono's format-string interpreter (hot path).
fn rfc3339_micros(at: DateTime<Utc>) -> String {
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
