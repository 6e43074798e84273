//! Sources: reading the idcard's input files into rows, and producing them onto the bus.

mod csv;
mod json;
pub(crate) mod produce;
#[cfg(test)]
mod tests;

pub use self::csv::{CsvRecords, RecordRef, SourceRow};
pub use self::json::JsonRecords;

use crate::idcard::Table;
use crate::idcard::config::SourceFormat;

/// A table's source file read record by record, in the idcard's format.
pub enum Records {
    Csv(CsvRecords<std::io::BufReader<std::fs::File>>),
    Json(JsonRecords),
}

impl Records {
    /// Opens `path` as `table`'s idcard says.
    pub fn open(table: &Table, path: &std::path::Path) -> Result<Self> {
        Ok(match table.config.source.format {
            SourceFormat::Csv => Self::Csv(CsvRecords::open(table, path)?),
            SourceFormat::Json => Self::Json(JsonRecords::open(table, path)?),
        })
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>> {
        match self {
            Self::Csv(records) => records.next_record(),
            Self::Json(records) => records.next_record(),
        }
    }

    /// How far reading is, in the unit of [`Self::size`].
    pub fn position(&self) -> u64 {
        match self {
            Self::Csv(records) => records.position(),
            Self::Json(records) => records.position(),
        }
    }

    /// What [`Self::position`] runs up to when it is not the file's size in bytes.
    pub fn size(&self) -> Option<u64> {
        match self {
            Self::Csv(_) => None,
            Self::Json(records) => records.size(),
        }
    }
}
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
        "{path}: the file holds no rows, and table `{table}` is FULL: each delivery replaces the whole table, so this one would empty it\n  hint: nothing was sent and silver keeps the last snapshot; check the export that wrote the file"
    )]
    EmptySnapshot { path: PathBuf, table: String },
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
