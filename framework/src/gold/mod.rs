//! Gold: dbt-like SQL models rendered with minijinja and run on DataFusion against the lake.
//!
//! ```text
//! models/**/*.sql ──load──▶ Models (config, refs, DAG) ──render──▶ SQL ──build──▶ <lake>/gold/<model>
//! ```
//!
//! [`Models::load`] renders every model once to learn its `config()`, `ref()`s and `source()`s,
//! orders them (a `ref` is an edge) and reports unknown refs, cycles and template errors with
//! file and line. [`build`] renders each selected model for real and materializes it: `view`
//! and `ephemeral` models live in the build's session (an ephemeral model is inlined as a CTE),
//! `table` models are written whole, `incremental` models are merged on their `unique_key`.

mod build;
mod config;
mod plan;
mod project;
mod render;
mod report;
mod select;
#[cfg(test)]
mod tests;

pub use build::{BuildOptions, ModelReport, build, missing_sources};
pub use config::{Materialized, ModelConfig};
pub use plan::{Shapes, check_sql};
pub use project::{Model, Models};
pub use render::SOURCE_LAYERS;
pub use report::render_summary;
pub use select::select;

/// Errors of loading and building models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Problems in the model files (template errors, unknown refs, cycles), each with its place.
    #[error("{0}")]
    Models(crate::idcard::Diagnostics),
    #[error("unknown model `{name}` in --select\n  hint: known models: {known}")]
    UnknownSelection { name: String, known: String },
    #[error(
        "model {model} ({file}): {source}\n  hint: run `framework compile --select {model}` to see the SQL that ran"
    )]
    Query {
        model: String,
        file: String,
        source: deltalake::datafusion::error::DataFusionError,
    },
    #[error("model {model}: {source}")]
    Delta {
        model: String,
        source: deltalake::DeltaTableError,
    },
    #[error(
        "gold table {model} is read by the selected models but has not been built yet\n  hint: build it too: `framework build --select {model}`"
    )]
    NotBuilt { model: String },
    #[error(
        "source {layer}.{table} has no Delta table yet\n  hint: load it first: `framework run --table {table}`"
    )]
    MissingSource { layer: String, table: String },
    /// A setting from the environment that does not parse, named with the hint.
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
