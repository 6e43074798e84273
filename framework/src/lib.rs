//! An idcard-driven lakehouse ingestion framework.
//!
//! Each table is described by one YAML idcard; this crate reads the idcards and moves the data:
//!
//! ```text
//! CSV ──produce──▶ topic (embedded log) ──bronze──▶ Delta, append, exactly once ──silver──▶ Delta, one row per key
//!                                           └──▶ reject table                      └──▶ quarantine table
//! silver ──gold (SQL models on DataFusion)──▶ Delta;  every layer ──quality──▶ quality/results
//! ```
//!
//! Modules follow the data: [`idcard`] (contracts) → [`source`] (CSV, producer) → [`bus`] (topic
//! log) → [`bronze`] → [`silver`] → [`gold`], with [`quality`] checking every layer, [`lake`]
//! for Delta IO, [`pipeline`] running the stages, [`dags`] the generated Airflow DAGs and [`cli`]
//! the `framework` binary's thin shell.

pub mod bronze;
pub mod bus;
pub mod cli;
pub mod dags;
pub mod fault;
pub mod files;
pub mod gateway;
pub mod gold;
pub mod idcard;
pub mod lake;
pub mod lease;
pub mod memory;
pub mod offsets;
pub mod pii;
pub mod pipeline;
pub mod quality;
pub mod silver;
pub mod source;
pub mod synth;
