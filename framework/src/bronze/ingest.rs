//! The bronze consumer loop: read from the committed offset, type, commit rows and offsets together.

use std::time::Instant;

use chrono::Utc;

use crate::bus::Bus;
use crate::idcard::Table;
use crate::lake::{Lake, Layer, app_id};

use super::parse::parse_messages;
use super::{Error, Result};

/// Bronze settings (runtime, not part of the idcard).
#[derive(Debug, Clone)]
pub struct BronzeOptions {
    /// Messages per Delta commit.
    pub batch_size: usize,
}

impl Default for BronzeOptions {
    fn default() -> Self {
        Self {
            batch_size: 100_000,
        }
    }
}

/// What a bronze run did.
#[derive(Debug, Clone, Default)]
pub struct BronzeStats {
    pub messages: u64,
    pub rows: u64,
    pub rejected: u64,
    pub commits: u64,
    pub seconds: f64,
}

/// Consumes `table`'s topic from the offsets committed in bronze up to its current end.
pub async fn ingest(
    bus: &Bus,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BronzeStats> {
    let started = Instant::now();
    let name = table.name();
    let topic = table.topic();
    let bus_err = |source| Error::Bus {
        table: name.to_owned(),
        source,
    };
    let partitions = bus
        .ensure_topic(topic, table.config.topic.partitions)
        .map_err(bus_err)?;
    let apps: Vec<String> = (0..partitions)
        .map(|p| app_id("bronze", topic, p))
        .collect();
    let committed = lake.txn_versions(Layer::Bronze, name, &apps).await?;
    let rejected = lake.txn_versions(Layer::Reject, name, &apps).await?;
    let mut next: Vec<u64> = apps
        .iter()
        .map(|a| committed.get(a).copied().unwrap_or(0) as u64)
        .collect();
    let mut ends = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        ends.push(bus.end_offset(topic, partition).map_err(bus_err)?);
    }
    let total: u64 = ends
        .iter()
        .zip(&next)
        .map(|(e, n)| e.saturating_sub(*n))
        .sum();
    let mut stats = BronzeStats::default();
    progress(0, total);
    for partition in 0..partitions {
        let p = partition as usize;
        while next[p] < ends[p] {
            let want = (ends[p] - next[p]).min(options.batch_size as u64) as usize;
            let messages = bus.read(topic, partition, next[p], want).map_err(bus_err)?;
            if messages.is_empty() {
                break;
            }
            let batch_end = messages.last().map_or(next[p], |m| m.offset + 1);
            let parsed = parse_messages(table, topic, &messages, Utc::now()).map_err(|source| {
                Error::Arrow {
                    table: name.to_owned(),
                    source,
                }
            })?;
            let txn = vec![(apps[p].clone(), batch_end as i64)];
            // Rejects first, skipping those a previous attempt already committed.
            let already = rejected.get(&apps[p]).copied().unwrap_or(0);
            let fresh = fresh_rejects(&parsed.rejects, already).map_err(|source| Error::Arrow {
                table: name.to_owned(),
                source,
            })?;
            if fresh.num_rows() > 0 {
                lake.write(Layer::Reject, name, vec![fresh], &[], txn.clone(), false)
                    .await?;
            }
            lake.write(
                Layer::Bronze,
                name,
                vec![parsed.rows.clone()],
                &["_ingestion_date"],
                txn,
                false,
            )
            .await?;
            stats.messages += messages.len() as u64;
            stats.rows += parsed.rows.num_rows() as u64;
            stats.rejected += parsed.rejects.num_rows() as u64;
            stats.commits += 1;
            next[p] = batch_end;
            progress(stats.messages, total);
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Rejects at or past `from` (the reject table's committed offset for their partition).
fn fresh_rejects(
    rejects: &deltalake::arrow::record_batch::RecordBatch,
    from: i64,
) -> Result<deltalake::arrow::record_batch::RecordBatch, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::array::{Array, BooleanArray, Int64Array};
    let offsets = rejects
        .column_by_name("_offset")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .expect("reject batches carry _offset");
    let keep: BooleanArray = (0..offsets.len())
        .map(|i| Some(offsets.value(i) >= from))
        .collect();
    deltalake::arrow::compute::filter_record_batch(rejects, &keep)
}
