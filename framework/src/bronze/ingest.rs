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
    // The batches to commit, in order: (partition, first offset, one past the last).
    let mut plan = Vec::new();
    for partition in 0..partitions {
        let mut from = committed
            .get(&apps[partition as usize])
            .copied()
            .unwrap_or(0) as u64;
        let end = bus.end_offset(topic, partition).map_err(bus_err)?;
        while from < end {
            let to = end.min(from + options.batch_size as u64);
            plan.push((partition, from, to));
            from = to;
        }
    }
    let total: u64 = plan.iter().map(|(_, from, to)| to - from).sum();
    let mut stats = BronzeStats::default();
    progress(0, total);
    // Pipeline: the next batch is read and typed on a blocking thread while this one is written.
    let prepare = |&(partition, from, to): &(u32, u64, u64)| {
        let (bus, table, topic) = (bus.clone(), table.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let messages = bus.read(&topic, partition, from, (to - from) as usize)?;
            let parsed = parse_messages(&table, &topic, &messages, Utc::now());
            Ok::<_, crate::bus::Error>((messages.len(), parsed))
        })
    };
    let mut upcoming = plan.first().map(prepare);
    for (i, &(partition, _, batch_end)) in plan.iter().enumerate() {
        let step = Instant::now();
        let job = upcoming.take().expect("a job per planned batch");
        upcoming = plan.get(i + 1).map(prepare);
        let (count, parsed) = job
            .await
            .map_err(|join| Error::Arrow {
                table: name.to_owned(),
                source: deltalake::arrow::error::ArrowError::ExternalError(Box::new(join)),
            })?
            .map_err(bus_err)?;
        let parsed = parsed.map_err(|source| Error::Arrow {
            table: name.to_owned(),
            source,
        })?;
        let waited_s = step.elapsed().as_secs_f64();
        let app = apps[partition as usize].clone();
        let txn = vec![(app.clone(), batch_end as i64)];
        // Rejects first, skipping those a previous attempt already committed.
        let already = rejected.get(&app).copied().unwrap_or(0);
        let fresh = fresh_rejects(&parsed.rejects, already).map_err(|source| Error::Arrow {
            table: name.to_owned(),
            source,
        })?;
        if fresh.num_rows() > 0 {
            lake.write(Layer::Reject, name, vec![fresh], &[], txn.clone(), false)
                .await?;
        }
        let (rows, rejects) = (parsed.rows.num_rows(), parsed.rejects.num_rows());
        lake.write(
            Layer::Bronze,
            name,
            vec![parsed.rows],
            &["_ingestion_date"],
            txn,
            false,
        )
        .await?;
        tracing::debug!(
            table = name,
            partition,
            messages = count,
            waited_s,
            write_s = step.elapsed().as_secs_f64() - waited_s,
            "bronze: batch committed"
        );
        stats.messages += count as u64;
        stats.rows += rows as u64;
        stats.rejected += rejects as u64;
        stats.commits += 1;
        progress(stats.messages, total);
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
