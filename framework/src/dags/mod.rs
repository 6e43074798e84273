//! Airflow 3 DAGs generated from the idcards (`framework generate-dags`): one daily pipeline DAG
//! and one ingestion DAG per idcard, rendered with minijinja. The DAGs only call the `framework`
//! binary; no pipeline logic lives in Python.

pub mod config;
pub mod generate;
#[cfg(test)]
mod tests;

pub use config::DagDefaults;
pub use generate::{GeneratedFile, check, generate, write};
