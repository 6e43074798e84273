//! Runs the stages for a set of tables, in dependency order, and reports per table.

mod checks;
mod deliveries;
mod inspect;
mod refresh;
mod report;
mod run;
pub mod vacuum;

pub use inspect::rejects;
pub use refresh::{Refreshed, refresh};
pub use report::{TableReport, peak_rss_mib, render_summary};
pub use run::{RunOptions, RunReport, Stage, run};

/// Errors of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown table `{name}`\n  hint: known tables: {known}")]
    UnknownTable { name: String, known: String },
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    #[error(transparent)]
    Bronze(#[from] crate::bronze::Error),
    #[error(transparent)]
    Silver(#[from] crate::silver::Error),
    #[error(transparent)]
    Gold(#[from] crate::gold::Error),
    #[error(transparent)]
    Quality(#[from] crate::quality::Error),
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
    #[error("{table}: {source}")]
    Query {
        table: String,
        source: deltalake::datafusion::error::DataFusionError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
