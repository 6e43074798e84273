//! Idcards: the ingestion contracts. `config` is what users write, `compile` checks it, `model`
//! is what the engine runs on.

pub mod compile;
pub mod config;
pub mod diagnostic;
pub mod model;
pub mod position;
#[cfg(test)]
mod tests;

pub use compile::{compile, generate_schema, load_dir};
pub use config::{Action, IdcardConfig, Mode};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use model::{Column, ColumnType, Project, Table};
