//! `framework run`: produce -> bronze -> silver per table.

use std::path::PathBuf;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::bronze::{self, BronzeOptions};
use crate::bus::Bus;
use crate::idcard::Project;
use crate::lake::Lake;
use crate::silver;
use crate::source::{self, ProduceOptions};

use super::{Error, Result, TableReport};

/// The last stage to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Stage {
    Bronze,
    Silver,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Folder with the source files.
    pub data: PathBuf,
    /// Produce the source files onto the topics first.
    pub produce: bool,
    pub produce_options: ProduceOptions,
    pub bronze_options: BronzeOptions,
    /// Stop after this stage.
    pub until: Stage,
    /// Show progress bars.
    pub progress: bool,
}

/// Runs `tables` (all when empty) in dependency order.
pub async fn run(
    project: &Project,
    tables: &[String],
    bus: &Bus,
    lake: &Lake,
    options: &RunOptions,
) -> Result<Vec<TableReport>> {
    for name in tables {
        if project.table(name).is_none() {
            return Err(Error::UnknownTable {
                name: name.clone(),
                known: project.names().join(", "),
            });
        }
    }
    let bars = MultiProgress::new();
    if !options.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut reports = Vec::new();
    for table in project
        .tables
        .iter()
        .filter(|t| tables.is_empty() || tables.iter().any(|n| n == t.name()))
    {
        let mut report = TableReport {
            table: table.name().to_owned(),
            ..TableReport::default()
        };
        if options.produce {
            let bar = bars.add(bar(table.name(), "produce"));
            let stats = source::produce(
                bus,
                table,
                &options.data,
                &options.produce_options,
                &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )?;
            bar.finish_and_clear();
            report.rows_read = stats.rows_read;
            report.produced = stats.messages;
            report.produce_s = stats.seconds;
        }
        let bar = bars.add(bar(table.name(), "bronze"));
        let stats = bronze::ingest(bus, lake, table, &options.bronze_options, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
        bar.finish_and_clear();
        report.consumed = stats.messages;
        report.bronze = stats.rows;
        report.rejected = stats.rejected;
        report.bronze_s = stats.seconds;
        if options.until >= Stage::Silver {
            let spinner = bars
                .add(ProgressBar::new_spinner().with_message(format!("{} silver", table.name())));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let stats = silver::refine(lake, project, table).await?;
            spinner.finish_and_clear();
            report.quarantined = stats.quarantined;
            report.dropped = stats.dropped;
            report.warnings = stats.warnings.values().sum();
            report.silver = stats.rows_after;
            report.silver_s = stats.seconds;
        }
        reports.push(report);
    }
    Ok(reports)
}

fn bar(table: &str, stage: &str) -> ProgressBar {
    let bar = ProgressBar::new(0).with_message(format!("{table} {stage}"));
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
