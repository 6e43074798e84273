//! Quality: suites of checks per layer (expectations/*.yaml, Great Expectations' names) and
//! dbt-style model tests (models/**/*.yml), run against the lake. A check never changes the
//! table it reads: its action is warn (record the failure) or fail (stop the run). What happens
//! to a single silver row (drop, quarantine) is decided in one place, the idcard's
//! `expectations`, on the way into silver. Every result is a row of `<lake>/quality/results`.

mod compile;
pub mod config;
mod report;
mod run;
#[cfg(test)]
mod tests;

pub use compile::{Check, Checks, Rule};
pub use config::{Expectation, SuiteLayer};
pub use report::{failure_message, render_summary};
pub use run::{
    CheckResult, RESULTS_TABLE, evaluate_checks, new_run_id, record_results, run_checks, runnable,
};

/// Errors of running checks (a failed check is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Checks(crate::idcard::Diagnostics),
    #[error("check {check}: {source}")]
    Query {
        check: String,
        source: deltalake::datafusion::error::DataFusionError,
    },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
