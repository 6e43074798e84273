//! Bronze: every message that arrived, typed per the idcard, appended exactly once.
//!
//! Exactly once: each commit to `<lake>/bronze/<table>` carries, per partition it covers, a Delta
//! `txn` action `framework-bronze/<topic>/<partition>` whose version is the next offset to read.
//! A restart reads those versions and resumes there, so a crash before the commit re-reads the
//! batch and a crash after it skips it. Rejects go to `<lake>/reject/<table>` in a commit of their
//! own with the same txn ids; only rejects at or past that table's version are written, so a
//! replay never writes a reject twice. Rejects are committed before the rows.

mod ingest;
mod message;
mod nested;
mod parse;
#[cfg(test)]
mod tests;

pub use ingest::{BronzeOptions, BronzeStats, ingest, ingest_whole_batches};
pub use nested::json_kind;
pub use parse::{Parsed, bronze_schema, parse_messages};

/// Errors of bronze ingestion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bronze {table}: {source}")]
    Bus {
        table: String,
        source: crate::bus::Error,
    },
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
    #[error("bronze {table}: building rows: {source}")]
    Arrow {
        table: String,
        source: deltalake::arrow::error::ArrowError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
