//! Silver: one current row per key. New bronze rows (past the offsets recorded in silver's own
//! `txn` actions) are normalised, checked against the idcard's expectations, deduplicated (latest
//! `sequence_by` wins, then the later offset), enriched, and applied by mode:
//! DIFF merges (an update needs a newer sequence, so late and duplicate messages never overwrite
//! newer data), FULL replaces the table with the batch, APPEND inserts unseen keys.
//! The commit that changes silver records the bronze offsets it consumed, so re-running is a no-op
//! and a crash before the commit re-does the batch.

mod dedup;
mod known_keys;
pub(crate) mod sql;
#[cfg(test)]
mod tests;
mod transform;

pub use transform::{SilverOptions, SilverStats, refine, refine_announcing};

/// Errors of the silver stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
    #[error("silver {table}: {source}")]
    Query {
        table: String,
        source: deltalake::datafusion::error::DataFusionError,
    },
    #[error("silver {table}: {source}")]
    Delta {
        table: String,
        source: deltalake::DeltaTableError,
    },
    #[error(
        "silver {table}: expectation `{rule}` failed on {count} row(s) (action: fail); first keys: {sample}\n  hint: fix the source rows, or change the expectation's action to quarantine"
    )]
    ExpectationFailed {
        table: String,
        rule: String,
        count: u64,
        sample: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
