//! The lake's upkeep while the gateway runs: every table it may write is vacuumed on a cadence.
//!
//! Each refresh of a gold model overwrites it, each silver MERGE rewrites the files holding the
//! keys it updates, and compaction rewrites small files into large ones: each leaves the files
//! it replaced on disk, for readers of older versions. Without a vacuum a busy gateway's lake
//! only grows: after 60 s of durable load (16 clients, batches of 10 `orders`,
//! `bench/gateway_memory.py`, 2026-12-07) silver `orders` held 296 MB in 91 files on disk;
//! with `--vacuum-retention-s 5`, 174 MB in 39, all of them live. Every [`vacuum_every`] the
//! gateway deletes the files removed more than the retention ago (`serve
//! --vacuum-retention-s`, 1 hour by default); a read pinned to an older version (a cursor,
//! `as_of_version`) whose files are gone is then a 410.

use std::time::Duration;

use super::Gateway;

/// How often the tables are vacuumed: every minute, or every retention when it is shorter.
pub fn vacuum_every(retention: Duration) -> Duration {
    retention.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Vacuums the lake's tables ([`crate::pipeline::vacuum::lake_tables`]) every
/// [`vacuum_every`] until the task is dropped. A table that fails is logged and tried again
/// next time.
pub async fn vacuum(gateway: std::sync::Weak<Gateway>, retention: Duration) {
    let mut ticks = tokio::time::interval(vacuum_every(retention));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        for (layer, table) in
            crate::pipeline::vacuum::lake_tables(&gateway.project, &gateway.models)
        {
            match gateway.lake.vacuum(layer, &table, retention).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::debug!(%layer, table, deleted, "upkeep: removed files vacuumed")
                }
                Err(e) => tracing::warn!("vacuuming {layer}/{table}: {e}"),
            }
        }
        let tables: Vec<&crate::idcard::Table> = gateway.project.tables.iter().collect();
        match crate::pipeline::vacuum::release_stored(
            &gateway.lake,
            &gateway.bus,
            &gateway.project,
            &tables,
        )
        .await
        {
            Ok(released) if !released.is_empty() => {
                tracing::debug!(?released, "upkeep: stored messages released from the log")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("releasing the embedded log's stored messages: {e}"),
        }
    }
}
