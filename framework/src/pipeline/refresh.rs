//! One table brought up to date from its topic, as the gateway's ingests need it: bronze,
//! silver, then the gold models that read the table. No producing and no quality suites: those
//! are the batch run's (`framework run`, `framework test`).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::bronze::{self, BronzeOptions};
use crate::bus::Bus;
use crate::gold::{self, BuildOptions, ModelReport, Models};
use crate::idcard::{Project, Table};
use crate::lake::Lake;
use crate::pii::Keyring;
use crate::silver::{self, SilverOptions};

use super::Result;

/// What a refresh wrote.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    /// Messages bronze consumed.
    pub consumed: u64,
    pub rejected: u64,
    pub quarantined: u64,
    pub models: Vec<ModelReport>,
}

/// Consumes what is on `table`'s topic past bronze's offsets into bronze and silver, then
/// builds the gold models that read the table (those whose inputs did not change are kept).
/// `keys` are the run's PII keys (silver compares randomized columns by plaintext with them,
/// gold's `pii_decrypt` decrypts with them).
pub async fn refresh(
    project: &Project,
    models: &Models,
    table: &Table,
    bus: &Bus,
    lake: &Lake,
    keys: &Arc<Keyring>,
) -> Result<Refreshed> {
    let started = std::time::Instant::now();
    // The gateway reads its tables' topics alone: outside the consumer group, so a restart
    // does not wait for the last process's member to time out.
    let bronze =
        bronze::ingest(bus, lake, table, &BronzeOptions::sole_reader(), &|_, _| {}).await?;
    let bronze_s = started.elapsed().as_secs_f64();
    let silver_options = SilverOptions {
        keys: keys.clone(),
        ..SilverOptions::default()
    };
    let silver = silver::refine(lake, project, table, &silver_options).await?;
    let silver_s = started.elapsed().as_secs_f64() - bronze_s;
    let mut selected: BTreeSet<String> =
        gold::select(models, &[format!("source:{}+", table.name())])?;
    for (model, _) in gold::missing_sources(lake, models, &selected).await? {
        selected.remove(&model);
    }
    let build_options = BuildOptions {
        keys: keys.clone(),
        ..BuildOptions::default()
    };
    let models = gold::build(lake, models, &selected, &build_options).await?;
    let per_model: Vec<String> = models
        .iter()
        .map(|m| {
            let kept = if m.unchanged { " kept" } else { "" };
            format!("{} {:.3}s{kept}", m.model, m.seconds)
        })
        .collect();
    tracing::debug!(
        table = table.name(),
        messages = bronze.messages,
        bronze_s,
        silver_s,
        gold_s = started.elapsed().as_secs_f64() - bronze_s - silver_s,
        models = per_model.join(", "),
        "refresh: done"
    );
    Ok(Refreshed {
        consumed: bronze.messages,
        rejected: bronze.rejected,
        quarantined: silver.quarantined,
        models,
    })
}
