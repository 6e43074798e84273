//! The `framework` binary: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::bronze::BronzeOptions;
use crate::bus::Bus;
use crate::idcard::{self, Project};
use crate::lake::Lake;
use crate::pipeline::{self, RunOptions, Stage, render_summary};
use crate::source::{self, ProduceOptions};

const EXAMPLES: &str = "\
Examples:
  framework validate                          check every idcard in ./idcards
  framework run --all                         produce, bronze and silver for every table (bundled sample)
  framework run --table orders --until bronze only produce and ingest orders into bronze
  framework produce --table orders            stream orders onto raw_orders with the idcard's delays
  framework generate-data --scale 1 --out /tmp/olist   write Kaggle-sized Olist-shaped CSVs";

/// Idcard-driven lakehouse ingestion: CSV -> topic -> bronze -> silver on Delta Lake.
#[derive(Debug, Parser)]
#[command(name = "framework", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Folder with the idcards (*.yaml).
    #[arg(
        long,
        global = true,
        env = "FRAMEWORK_IDCARDS",
        default_value = "idcards"
    )]
    idcards: PathBuf,
    /// Folder of the lake (Delta tables and the embedded topic log).
    #[arg(long, global = true, env = "FRAMEWORK_LAKE", default_value = "lake")]
    lake: PathBuf,
    /// Log filter (tracing syntax, e.g. `info` or `framework=debug`).
    #[arg(long, global = true, env = "FRAMEWORK_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every idcard (JSON Schema, then cross-references) without running anything.
    Validate,
    /// Send a table's source file to its topic, simulating a live stream.
    Produce {
        /// Table (idcard name) to produce.
        #[arg(long)]
        table: String,
        /// Folder with the source files.
        #[arg(long, env = "FRAMEWORK_DATA", default_value = "data/olist_sample")]
        data: PathBuf,
        /// Send as fast as possible instead of pausing between messages.
        #[arg(long)]
        no_delay: bool,
        /// Seed of the simulation (late messages, duplicates, delays).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Stop after this many source rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Produce (in bulk) -> bronze -> silver for some tables or all of them.
    Run {
        /// Table to run; repeat for several.
        #[arg(long, required_unless_present = "all")]
        table: Vec<String>,
        /// Run every table, in dependency order.
        #[arg(long, conflicts_with = "table")]
        all: bool,
        /// Folder with the source files.
        #[arg(long, env = "FRAMEWORK_DATA", default_value = "data/olist_sample")]
        data: PathBuf,
        /// Consume what is already on the topics instead of producing the source files first.
        #[arg(long)]
        no_produce: bool,
        /// Last stage to run.
        #[arg(long, value_enum, default_value = "silver")]
        until: Stage,
        /// Seed of the producer's simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Messages per bronze commit.
        #[arg(long, default_value_t = 100_000)]
        batch_size: usize,
        /// Also write the summary as JSON to this file (with the peak memory), for benchmarks.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Write the idcard JSON Schema (idcards/idcard.schema.json) from the Rust types.
    GenerateSchema {
        /// Fail if the file differs instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Write Olist-shaped CSV files at a scale (1 = Kaggle size) for benchmarks and scale tests.
    GenerateData {
        /// Scale factor: 1 is ~100k orders, ~113k items, ~1M geolocation rows.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .try_init();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let text = err.to_string();
            if text.starts_with("error: ") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load(idcards: &std::path::Path) -> Result<Project> {
    idcard::load_dir(idcards)
        .map_err(|d| anyhow::anyhow!("{d}\n{} problem(s) in {}", d.0.len(), idcards.display()))
}

fn execute(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let lake = Lake::new(&cli.lake);
    let bus = Bus::embedded(lake.bus_dir());
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.command {
        Command::Validate => {
            let project = load(&cli.idcards)?;
            println!(
                "ok: {} idcards valid ({})",
                project.tables.len(),
                project.names().join(", ")
            );
        }
        Command::Produce {
            table,
            data,
            no_delay,
            seed,
            limit,
        } => {
            let project = load(&cli.idcards)?;
            let Some(table) = project.table(&table) else {
                bail!(
                    "unknown table `{table}`\n  hint: known tables: {}",
                    project.names().join(", ")
                );
            };
            let options = ProduceOptions {
                delay: !no_delay,
                seed,
                limit,
            };
            let bar = indicatif::ProgressBar::new(0);
            if !progress {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let stats = source::produce(&bus, table, &data, &options, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            println!(
                "produced {} messages for {} rows to {} ({} late, {} duplicated, {} broken) in {:.2}s",
                stats.messages,
                stats.rows_read,
                table.topic(),
                stats.late,
                stats.duplicates,
                stats.broken,
                stats.seconds
            );
        }
        Command::Run {
            table,
            all,
            data,
            no_produce,
            until,
            seed,
            batch_size,
            report,
        } => {
            let project = load(&cli.idcards)?;
            let tables = if all { Vec::new() } else { table };
            let options = RunOptions {
                data,
                produce: !no_produce,
                produce_options: ProduceOptions {
                    delay: false,
                    seed,
                    limit: None,
                },
                bronze_options: BronzeOptions { batch_size },
                until,
                progress,
            };
            let reports =
                runtime.block_on(pipeline::run(&project, &tables, &bus, &lake, &options))?;
            println!("{}", render_summary(&reports));
            if let Some(path) = report {
                let json = serde_json::json!({ "tables": reports, "peak_rss_mib": pipeline::peak_rss_mib() });
                std::fs::write(&path, serde_json::to_string_pretty(&json)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::GenerateSchema { check } => {
            let path = cli.idcards.join("idcard.schema.json");
            let schema = idcard::generate_schema();
            if check {
                let current = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if current != schema {
                    bail!(
                        "{} is stale\n  hint: run `framework generate-schema`",
                        path.display()
                    );
                }
                println!("ok: {} is up to date", path.display());
            } else {
                std::fs::write(&path, schema)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        Command::GenerateData { scale, out, seed } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let stats = crate::synth::generate(scale, seed, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            for (file, rows) in stats.files {
                println!("{rows:>10}  {file}");
            }
        }
    }
    Ok(())
}
