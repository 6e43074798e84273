//! Deletes the files that commits removed from the lake's tables (Delta VACUUM), for
//! `framework vacuum` and for the gateway's upkeep.
//!
//! Every silver MERGE rewrites the files holding the keys it updates, every gold build
//! overwrites its model, and compaction rewrites small files into large ones; each leaves the
//! files it replaced on disk for readers of older versions. A vacuum deletes those removed more
//! than a retention ago: a read of a version older than that may then fail.

use std::collections::BTreeMap;

use crate::bus::Bus;
use crate::gold::Models;
use crate::idcard::{Project, Table};
use crate::lake::{Lake, Layer};
use crate::offsets::{Cursor, Stage};

use super::Result;

/// The lake tables of `tables`: each one's bronze, reject, quarantine and silver (with its
/// tombstones and `latest_by` tables).
pub fn tables_of<'a>(tables: impl IntoIterator<Item = &'a Table>) -> Vec<(Layer, String)> {
    let mut out = Vec::new();
    for table in tables {
        let name = table.name().to_owned();
        out.push((Layer::Bronze, name.clone()));
        out.push((Layer::Reject, name.clone()));
        out.push((Layer::Quarantine, name));
        out.extend(table.lake_names().into_iter().map(|n| (Layer::Silver, n)));
    }
    out
}

/// Every table the pipeline writes for `project` and `models`: [`tables_of`] each idcard,
/// the gold models stored as tables, the quality results and the deliveries record.
pub fn lake_tables(project: &Project, models: &Models) -> Vec<(Layer, String)> {
    let mut out = tables_of(&project.tables);
    out.extend(
        models
            .models
            .iter()
            .filter(|m| m.config.materialized.is_stored())
            .map(|m| (Layer::Gold, m.name.clone())),
    );
    out.push((Layer::Quality, crate::quality::RESULTS_TABLE.to_owned()));
    out.push((Layer::Meta, super::deliveries::TABLE.to_owned()));
    out
}

/// Vacuums each of `tables` in turn (one missing from the lake is skipped) with `retention`,
/// calling `done` after each with the files it deleted. Stops at the first error.
pub async fn vacuum(
    lake: &Lake,
    tables: &[(Layer, String)],
    retention: std::time::Duration,
    done: &mut (dyn FnMut(Layer, &str, usize) + Send),
) -> Result<()> {
    for (layer, table) in tables {
        let deleted = lake.vacuum(*layer, table, retention).await?;
        done(*layer, table, deleted);
    }
    Ok(())
}

/// On the embedded log, gives back the disk space of the messages bronze has stored: each
/// topic of `chosen` is released ([`crate::bus::EmbeddedLog::release`]) below the offsets that
/// bronze records for every table of `project` reading it (its rows and its rejects are then
/// in the lake: bronze commits its rejects first, then its rows with the offsets). Nothing on
/// Kafka, whose retention is the broker's. Returns the bytes released per topic that gave any
/// back.
pub async fn release_stored(
    lake: &Lake,
    bus: &Bus,
    project: &Project,
    chosen: &[&Table],
) -> Result<Vec<(String, u64)>> {
    let Bus::Embedded(log) = bus else {
        return Ok(Vec::new());
    };
    let topics: Vec<&str> = chosen.iter().map(|t| t.topic()).collect();
    // Per topic, per partition: the lowest offset a table reading it still needs.
    let mut needed: BTreeMap<&str, BTreeMap<u32, i64>> = BTreeMap::new();
    for table in project
        .tables
        .iter()
        .filter(|t| topics.contains(&t.topic()))
    {
        let topic = table.topic();
        let partitions = match log.partitions(topic) {
            Ok(partitions) => partitions,
            Err(crate::bus::Error::UnknownTopic { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let stored = Cursor::new(Stage::Bronze, topic, partitions)
            .read(lake, Layer::Bronze, table.name())
            .await?;
        let topic_needs = needed.entry(topic).or_default();
        for partition in 0..partitions {
            let next = stored.next(partition);
            topic_needs
                .entry(partition)
                .and_modify(|n| *n = (*n).min(next))
                .or_insert(next);
        }
    }
    let mut released = Vec::new();
    for (topic, partitions) in needed {
        let mut bytes = 0;
        for (partition, next) in partitions {
            bytes += log.release(topic, partition, next.max(0) as u64)?;
        }
        if bytes > 0 {
            released.push((topic.to_owned(), bytes));
        }
    }
    Ok(released)
}
