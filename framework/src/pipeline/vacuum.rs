//! Deletes the files that commits removed from the lake's tables (Delta VACUUM), for
//! `framework vacuum` and for the gateway's upkeep.
//!
//! Every silver MERGE rewrites the files holding the keys it updates, every gold build
//! overwrites its model, and compaction rewrites small files into large ones; each leaves the
//! files it replaced on disk for readers of older versions. A vacuum deletes those removed more
//! than a retention ago: a read of a version older than that may then fail.

use crate::gold::Models;
use crate::idcard::{Project, Table};
use crate::lake::{Lake, Layer};

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
