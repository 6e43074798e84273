//! Sources: reading the idcard's input files into rows, and producing them onto the bus.

mod csv;
pub(crate) mod produce;
#[cfg(test)]
mod tests;

pub use self::csv::{CsvRecords, RecordRef, SourceRow};
pub use produce::{ProduceOptions, ProduceStats, produce, rfc3339_micros};

use std::path::PathBuf;

/// Errors of a source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path}: cannot read: {source}\n  hint: an idcard's `source.path` is read from the --data folder; is --data right?"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:1: the header lacks column `{column}` that the idcard declares\n  hint: {hint}"
    )]
    MissingColumn {
        path: PathBuf,
        column: String,
        hint: String,
    },
    #[error(
        "{path}:1: column `{column}` is not in the idcard's schema\n  hint: add it to `schema:` or map it with `source.rename`"
    )]
    UnknownColumn { path: PathBuf, column: String },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Pii(#[from] crate::pii::edge::EdgeError),
    #[error(
        "{path}: the file holds a header and no rows, and table `{table}` is FULL: each delivery replaces the whole table, so this one would empty it\n  hint: nothing was sent and silver keeps the last snapshot; check the export that wrote the file"
    )]
    EmptySnapshot { path: PathBuf, table: String },
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
