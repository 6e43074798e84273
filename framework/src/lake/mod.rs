//! The lake: where each layer's Delta tables live, and the Delta / DataFusion plumbing that every
//! stage shares (open, append with offsets in the commit, read transaction versions, query).

mod delta;

pub use delta::{
    COMPRESSION_VAR, Changes, FILE_ROWS, Lake, Layer, LiveFiles, NullCounts, TableStats,
    TxnVersions, collect_apart, collect_batches, compression, every_core_per_query, file_of,
    session, writer_properties,
};

/// Errors of lake IO.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{layer} table {table}: {source}")]
    Delta {
        layer: Layer,
        table: String,
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("{layer} table {table}: query failed: {source}")]
    Query {
        layer: Layer,
        table: String,
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    #[error("{layer} table {table}: lease {source}")]
    Lease {
        layer: Layer,
        table: String,
        source: crate::lease::LeaseError,
    },
    /// A version older than the latest whose files a vacuum deleted.
    #[error(
        "{layer} table {table}: version {version} can no longer be read: {missing} of its files were vacuumed (deleted once later commits had replaced them), e.g. {example}"
    )]
    Vacuumed {
        layer: Layer,
        table: String,
        version: i64,
        missing: usize,
        example: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
