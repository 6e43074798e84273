//! The `framework` binary: a thin shell over the library.

mod keys;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::bronze::BronzeOptions;
use crate::bus::Bus;
use crate::gold::{self, BuildOptions, Models};
use crate::idcard::{self, Project, Table};
use crate::lake::Lake;
use crate::pipeline::{self, RunOptions, Stage, render_summary};
use crate::quality::{self, Checks, SuiteLayer};
use crate::silver::SilverOptions;
use crate::source::{self, ProduceOptions};

const EXAMPLES: &str = "\
Examples:
  framework validate                          check every idcard, model and quality suite
  framework run --all                         the whole lake: produce, bronze, silver, gold, checks
  framework run --table orders                orders, then the gold models that read it
  framework run --table orders --until bronze only produce and ingest orders into bronze
  framework build --select gold_daily_sales+  build one gold model and what reads it
  framework compile --select gold_customer_rfm  print the SQL a model runs
  framework test                              run the quality suites; non-zero exit if a `fail` check fails
  framework rejects --table orders            the rows that did not make it into bronze or silver, and why
  framework vacuum                            delete the files commits replaced over 7 days ago
  framework produce --table orders            stream orders onto raw_orders with the idcard's delays
  framework generate-dags                     write the Airflow DAGs into dags_generated/
  framework generate-dags --check             fail if dags_generated/ is not what the idcards generate
  framework generate-data --scale 1 --out /tmp/olist   write Kaggle-sized Olist-shaped CSVs
  framework serve                             the HTTP gateway: read every layer, POST /ingest/{table}";

/// Idcard-driven lakehouse ingestion: CSV -> topic -> bronze -> silver -> gold on Delta Lake.
#[derive(Debug, Parser)]
#[command(name = "framework", version, about, after_help = EXAMPLES, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The flags every command takes.
#[derive(Debug, clap::Args)]
struct Global {
    /// Folder with the idcards (*.yaml).
    #[arg(
        long,
        global = true,
        env = "FRAMEWORK_IDCARDS",
        default_value = "idcards"
    )]
    idcards: PathBuf,
    /// Where the lake lives: a folder (Delta tables and the embedded topic log), or
    /// `s3://bucket/prefix` on an S3-compatible object store (with a Kafka --bus), configured by
    /// the usual AWS_* variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ALLOW_HTTP=true for http endpoints, AWS_CONDITIONAL_PUT=etag (or
    /// AWS_S3_ALLOW_UNSAFE_RENAME=true with a single writer).
    #[arg(long, global = true, env = "FRAMEWORK_LAKE", default_value = "lake")]
    lake: PathBuf,
    /// The topic bus: `embedded` (a file log under the lake, no server) or
    /// `kafka://host:port[,host:port]`.
    #[arg(long, global = true, env = "FRAMEWORK_BUS", default_value = "embedded")]
    bus: String,
    /// Folder with the gold SQL models (staging/, intermediate/, gold/, macros/).
    #[arg(
        long,
        global = true,
        env = "FRAMEWORK_MODELS",
        default_value = "models"
    )]
    models: PathBuf,
    /// Folder with the quality suites (*.yaml, one suite each).
    #[arg(
        long,
        global = true,
        env = "FRAMEWORK_EXPECTATIONS",
        default_value = "expectations"
    )]
    expectations: PathBuf,
    /// Model variables as a YAML map, e.g. `{reference_date: 2018-09-01, lookback_days: 3}`.
    #[arg(long, global = true, env = "FRAMEWORK_VARS", default_value = "{}")]
    vars: String,
    /// Log filter (tracing syntax, e.g. `info` or `framework=debug`). librdkafka's own log (every
    /// reconnect attempt to a broker that is down) is off unless named, e.g. `librdkafka=warn`.
    #[arg(long, global = true, env = "FRAMEWORK_LOG", default_value = "warn")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every idcard (JSON Schema, then cross-references), every model (rendered and planned
    /// against the silver tables' shapes) and every quality suite, without running anything; and
    /// that each idcard's source file is in --data, when that folder exists.
    #[command(
        after_help = "Examples:\n  framework validate\n  framework validate --idcards ./idcards --data /mnt/exports/olist"
    )]
    Validate {
        /// Folder with the source files (checked only when it exists).
        #[arg(long, env = "FRAMEWORK_DATA", default_value = "data/olist_sample")]
        data: PathBuf,
    },
    /// Send a table's source file to its topic, simulating a live stream.
    #[command(
        after_help = "Examples:\n  framework produce --table orders                     stream with the idcard's delays, late and duplicate messages\n  framework produce --table orders --no-delay --seed 7  as fast as possible, another simulation\n  framework produce --table sellers --limit 10          the first 10 rows only"
    )]
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
    /// Serve the HTTP gateway: every layer's tables to read (streamed; GET /docs lists the
    /// routes), POST /ingest/{table} and /ingest_fast/{table}, /health, /ready and /stats, on
    /// the embedded log or a Kafka bus (--bus). Writes need a bearer token:
    /// FRAMEWORK_GATEWAY_TOKEN (one token, every scope) or a --tokens file; without either,
    /// reads are open and writes refused. Ctrl-C or SIGTERM: the requests in flight are
    /// answered and the refreshes under way finish (at most 20 s) before it exits.
    #[command(after_help = "Examples:
  FRAMEWORK_GATEWAY_TOKEN=$(openssl rand -hex 16) framework serve
  framework serve --addr 0.0.0.0:8080 --tokens /etc/framework/tokens.yaml
  curl 'localhost:8080/staging/orders?order_status=delivered&limit=5'    (no token set: reads open)
  curl -H \"Authorization: Bearer $TOKEN\" -H 'Accept: text/csv' 'localhost:8080/curated/gold_daily_sales?order_by=-order_date'
  curl -H 'Accept: application/x-ndjson' 'localhost:8080/staging/orders?limit=all' > orders.ndjson    (a whole table, streamed)
  framework --bus kafka://localhost:9092 serve    (ingests go to the Kafka topics)
  curl -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n       -d '{\"records\": [{\"seller_id\": \"s1\", \"seller_zip_code_prefix\": \"01001\", \"seller_city\": \"sao paulo\", \"seller_state\": \"SP\"}]}' \\\n       localhost:8080/ingest/sellers")]
    Serve {
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, env = "FRAMEWORK_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Tokens file (YAML list of `{ name, token_sha256, scopes }`), kept outside the repo.
        #[arg(long, env = "FRAMEWORK_GATEWAY_TOKENS")]
        tokens: Option<PathBuf>,
        /// Largest request body, in bytes (413 above).
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Most records in one ingest request (413 above; 1 to 100000).
        #[arg(long, default_value_t = 10_000, value_parser = records_limit)]
        max_records: usize,
        /// Ingest requests in flight at once (429 with Retry-After above).
        #[arg(long, default_value_t = 64)]
        max_ingests: usize,
        /// Seconds an ingest (/ingest, /ingest_fast?wait=visible) waits for its records to be
        /// visible; past it the answer is 504 with the offsets where they are durable, and they
        /// become visible later.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        visible_timeout_s: u64,
        /// Seconds an ingest waits for its records to be durable on the topic (the committer's
        /// fsync, or the broker's acknowledgement); past it the answer is 504, and a retry with
        /// the same Idempotency-Key appends them at most once.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        durable_timeout_s: u64,
        /// Seconds a connection may wait on a read or a write without a byte moving before it
        /// is closed (a client that stops mid-request, sends nothing, or never reads its
        /// answer); default: the longer of --visible-timeout-s and --durable-timeout-s plus
        /// 30 s, as the server also reads a connection while it answers.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        idle_timeout_s: Option<u64>,
        /// Folder for the gateway's own files (on a Kafka bus, the Idempotency-Keys it has
        /// seen); default `_gateway` in a local lake. Needed for Idempotency-Key on Kafka with a
        /// lake on an object store.
        #[arg(long, env = "FRAMEWORK_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Seconds the files a commit removed (a MERGE's rewritten files, a gold model's
        /// previous build, compacted small files) stay on disk: every minute (or every
        /// retention, when shorter) the gateway vacuums its tables, deleting those removed
        /// longer ago. Reads pinned to an older version (a cursor, as_of_version) may fail
        /// after that. 0: never vacuum.
        #[arg(long, default_value_t = crate::gateway::DEFAULT_VACUUM_RETENTION.as_secs())]
        vacuum_retention_s: u64,
    },
    /// Produce (in bulk; each source row once unless --simulate) -> bronze -> silver for some
    /// tables or all of them, each layer's checks, then the gold models that read them.
    #[command(
        after_help = "Examples:\n  framework run --all                              the whole lake: produce, bronze, silver, gold, checks\n  framework run --table orders --table customers   these tables, then the gold models that read them\n  framework run --all --until produce              only send the source files onto the topics\n  framework run --all --no-produce --until silver  what is on the topics, up to silver\n  framework run --all --simulate --seed 7          with late and duplicate messages\n  framework --bus kafka://localhost:9092 run --all through a Kafka cluster"
    )]
    Run(RunArgs),
    /// Build gold models on DataFusion from the lake's silver tables (no ingestion).
    ///
    /// Selectors: `name`, `+name` (with the models it reads), `name+` (with the models that read
    /// it), `source:orders+` (models reading silver orders, and downstream).
    #[command(
        after_help = "Examples:\n  framework build                               every model\n  framework build --select gold_daily_sales+    one model and what reads it\n  framework build --select source:orders+       the models that read silver orders\n  framework build --full-refresh                rebuild incremental models whole"
    )]
    Build {
        /// Models to build; repeat or separate with commas (default: all).
        #[arg(long, value_delimiter = ',')]
        select: Vec<String>,
        /// Rebuild incremental models whole instead of merging the changed window.
        #[arg(long)]
        full_refresh: bool,
        /// Models of one dependency wave built at once (fewer: less memory), when the tables
        /// they read hold over 64 MiB; below that a wave's models are all built at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// Also write the model reports as JSON to this file, for benchmarks.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run the quality suites and model tests against the lake and record the results in
    /// <lake>/quality/results. Exits non-zero when a check with action `fail` fails.
    #[command(
        after_help = "Examples:\n  framework test                       every suite and model test\n  framework test --layer silver        the silver suite only\n  framework test --suite freshness     one suite"
    )]
    Test {
        /// Only the checks of this layer.
        #[arg(long, value_enum)]
        layer: Option<SuiteLayer>,
        /// Only these suites (model tests are the suite `model_tests`).
        #[arg(long, value_delimiter = ',')]
        suite: Vec<String>,
    },
    /// Show what did not make it into a table, and why: its reject rows (messages bronze could
    /// not read or type, with the reason and the source line) and its quarantine rows (silver
    /// rows that failed an idcard expectation, with the rule).
    #[command(
        after_help = "Examples:\n  framework rejects --table orders\n  framework rejects --table order_items --limit 50"
    )]
    Rejects {
        /// Table (idcard name).
        #[arg(long)]
        table: String,
        /// Rows to show of each.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Delete the files that commits removed from the lake's tables more than --retention-s
    /// ago (Delta VACUUM): the files a silver MERGE rewrote, gold's previous builds, compacted
    /// small files. A read of a version older than the retention may fail afterwards; live
    /// data is never touched. On the embedded log, also give back the disk space of the
    /// messages that bronze has stored (they are bronze's rows and rejects; the topic's offsets
    /// stay). `framework serve` does this every minute on its own.
    #[command(
        after_help = "Examples:\n  framework vacuum                                   (files removed over 7 days ago)\n  framework vacuum --retention-s 86400 --table orders,order_items\n  framework vacuum --retention-s 0                   (every removed file: no time travel left)"
    )]
    Vacuum {
        /// Seconds a removed file is kept; default 7 days (Delta's own default).
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        retention_s: u64,
        /// Only these tables (their bronze, reject, quarantine and silver); default: every
        /// table, the gold models, the quality results and the deliveries record.
        #[arg(long, value_delimiter = ',')]
        table: Vec<String>,
    },
    /// Print the SQL that models run, rendered (ephemeral models inlined as CTEs).
    #[command(
        after_help = "Examples:\n  framework compile --select gold_customer_rfm\n  framework compile --incremental --select gold_daily_sales\n  framework compile --manifest target/manifest.json"
    )]
    Compile {
        /// Models to print (default: all).
        #[arg(long, value_delimiter = ',')]
        select: Vec<String>,
        /// Render incremental models as an incremental run would (is_incremental() true).
        #[arg(long)]
        incremental: bool,
        /// Also write every model as JSON (name, materialization, relation, SQL) in build order.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Write the idcard JSON Schema (idcards/idcard.schema.json) from the Rust types.
    #[command(
        after_help = "Examples:\n  framework generate-schema\n  framework generate-schema --check"
    )]
    GenerateSchema {
        /// Fail if the file differs instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Write the Airflow 3 DAGs from the idcards, the models and the project file: the daily
    /// pipeline (<project>_pipeline.py), one ingestion DAG per idcard (<project>_ingest_<table>.py)
    /// publishing its bronze and silver tables as Assets, and the gold DAG scheduled on the silver
    /// Assets the models read (<project>_gold.py). Removes generated files whose idcard is gone;
    /// leaves other files alone. Output is deterministic: CI checks it with --check.
    #[command(
        after_help = "Examples:\n  framework generate-dags\n  framework generate-dags --check\n  framework generate-dags --out /opt/airflow/dags --project framework.yaml"
    )]
    GenerateDags {
        /// Folder of the DAG files.
        #[arg(long, default_value = "dags_generated")]
        out: PathBuf,
        /// Project file: its `dags:` section sets the DAG id prefix, owner, schedules, retries and
        /// alerts (defaults when the file is missing).
        #[arg(long, env = "FRAMEWORK_PROJECT", default_value = "framework.yaml")]
        project: PathBuf,
        /// Fail, naming the stale files, if the folder differs instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Write Olist-shaped CSV files at a scale (1 = Kaggle size) for benchmarks and scale tests.
    #[command(
        after_help = "Examples:\n  framework generate-data --scale 1 --out /tmp/olist\n  framework generate-data --scale 0.05 --seed 7 --out /tmp/small"
    )]
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
    /// The environment's keyset of PII data keys (`keys/<env>.keyset.json` beside the idcards
    /// folder, or FRAMEWORK_KEYSET): data keys per domain, wrapped under root keys from
    /// FRAMEWORK_ROOT_KEY or FRAMEWORK_ROOT_KEY_FILE (on `dev`, a laptop key under
    /// ~/.config/framework is made on first use). No key material is ever printed.
    #[command(after_help = "Examples:
  framework keys create                                   dev: keyset and data keys for the idcards' domains
  framework keys new-root --out ~/.secrets/prod-eu.key    a root key file (mode 0600)
  FRAMEWORK_ROOT_KEY_FILE=~/.secrets/prod-eu.key framework keys create --env prod
  FRAMEWORK_ROOT_KEY_FILE=~/.secrets/prod-eu.key framework keys rewrap --env prod --add-root-file ~/.secrets/prod-us.key
  framework keys rotate --domain location                 new values use a new key id; old ones still decrypt
  framework keys re-encrypt                               then rewrite the lake under the new key
  framework keys list --env prod")]
    Keys {
        /// Environment (dev, prod, ...): which keyset and which root keys.
        #[arg(long, env = "FRAMEWORK_ENV", default_value = "dev", global = true)]
        env: String,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

/// The flags of `framework run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
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
    #[arg(long, value_enum, default_value = "gold")]
    until: Stage,
    /// Rebuild incremental gold models whole.
    #[arg(long)]
    full_refresh: bool,
    /// Gold models of one dependency wave built at once (fewer: less memory), when the
    /// tables they read hold over 64 MiB; below that a wave's models are all built at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Send each source file even when this lake already ingested the same content (by
    /// default an unchanged file is not sent again).
    #[arg(long)]
    resend: bool,
    /// Simulate a live stream while producing: late and duplicate messages as the idcard's
    /// `producer` section says (by default every source row is sent once, as it is).
    #[arg(long)]
    simulate: bool,
    /// Seed of the producer's simulation (with --simulate).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Messages per bronze commit, 1 to 1 000 000 000 (a commit has a fixed cost of ~0.1 s;
    /// bigger batches hold more rows in memory).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    batch_size: u64,
    /// Bronze rows a silver commit takes at most from each partition: a larger delivery is
    /// refined in several commits, which bounds memory (bigger: fewer commits, more memory).
    /// An APPEND table's commits take half as many.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    silver_batch_size: u64,
    /// Kafka: milliseconds bronze waits for a first message before it checks again whether
    /// the topic is read to the end (and stops if so); it also checks whenever the stream pauses.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_ms: u64,
    /// Embedded log: keep the messages bronze has stored on the topics. By default the run
    /// gives their disk space back at its end (they are bronze's rows now); a later
    /// `framework vacuum` gives back what was kept.
    #[arg(long)]
    keep_log: bool,
    /// Also write the summary as JSON to this file (with the peak memory), for benchmarks.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: both are process-wide settings.
    crate::memory::without_transparent_huge_pages();
    if matches!(cli.command, Command::Serve { .. }) {
        crate::memory::return_freed_memory_promptly();
    } else {
        crate::memory::return_freed_memory_soon();
    }
    let mut filter = cli.global.log.clone();
    if !cli.global.log.contains("rdkafka") {
        filter.push_str(",librdkafka=off,rdkafka=off");
    }
    if !cli.global.log.contains("deltalake") {
        // delta-rs warns about its own internals (e.g. a table log it probes); our errors say
        // what went wrong with a table, in words that name it.
        filter.push_str(",deltalake=error,deltalake_core=error");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let checked = crate::lake::compression().map_err(anyhow::Error::msg);
    match checked.and_then(|_| execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let text = err.to_string();
            if text.starts_with("error: ") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            // Most messages already say their cause; print only what they do not.
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn load(idcards: &std::path::Path) -> Result<Project> {
    idcard::load_dir(idcards)
        .map_err(|d| anyhow::anyhow!("{d}\n{} problem(s) in {}", d.0.len(), idcards.display()))
}

/// The data keys of the idcards' PII columns (`keys/<env>.keyset.json` beside the idcards
/// folder unless FRAMEWORK_KEYSET says otherwise).
fn keyring(cli: &Global, project: &Project) -> Result<std::sync::Arc<crate::pii::Keyring>> {
    Ok(crate::pii::keyring(project, project_dir(cli))?)
}

/// The lake as a run over `project` writes it: tables holding ciphertext are created without
/// statistics on those columns ([`crate::pii::stats_off`]).
fn writing(lake: &Lake, project: &Project) -> Lake {
    lake.clone()
        .without_stats_on(crate::pii::stats_off(project))
}

/// The folder that holds the idcards folder (and `keys/`).
fn project_dir(cli: &Global) -> &std::path::Path {
    cli.idcards.parent().unwrap_or(std::path::Path::new(""))
}

/// The idcards, the gold models and the quality suites the command line names.
fn load_all(cli: &Global) -> Result<(Project, Models, Checks)> {
    let project = load(&cli.idcards)?;
    let models = load_models(&cli.models, &cli.vars, &project)?;
    let checks = load_checks(&cli.expectations, &project, &models)?;
    Ok((project, models, checks))
}

fn load_checks(dir: &std::path::Path, project: &Project, models: &Models) -> Result<Checks> {
    Checks::load(dir, project, models).map_err(|d| {
        anyhow::anyhow!(
            "{d}\n{} problem(s) in the quality suites and model tests",
            d.0.len()
        )
    })
}

fn load_models(dir: &std::path::Path, vars: &str, project: &Project) -> Result<Models> {
    let vars: std::collections::BTreeMap<String, serde_json::Value> = serde_yaml_ng::from_str(vars)
        .with_context(|| {
            format!(
                "--vars `{vars}` is not a YAML map\n  hint: --vars '{{reference_date: 2018-09-01}}'"
            )
        })?;
    Models::load(dir, project, vars)
        .map_err(|d| anyhow::anyhow!("{d}\n{} problem(s) in {}", d.0.len(), dir.display()))
}

/// What the commands share: the global flags, the async runtime, the lake and the bus.
struct Env {
    cli: Global,
    runtime: tokio::runtime::Runtime,
    lake: Lake,
    bus: Bus,
    /// Progress bars on (stderr is a terminal).
    progress: bool,
}

fn execute(
    Cli {
        global: cli,
        command,
    }: Cli,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_keep_alive(crate::memory::THREAD_KEEP_ALIVE)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let lake = Lake::at(&cli.lake.to_string_lossy());
    let bus_dir = match lake.bus_dir() {
        Some(dir) => dir,
        None if cli.bus == "embedded" => bail!(
            "the embedded topic log needs a local lake, and --lake `{}` is an object store\n  \
             hint: with a lake on S3, pass a Kafka bus: --bus kafka://host:port",
            cli.lake.display()
        ),
        None => std::path::PathBuf::new(),
    };
    let Some(bus) = Bus::from_url(&cli.bus, bus_dir) else {
        bail!(
            "--bus `{}` is not a bus\n  hint: `embedded` or `kafka://host:port`",
            cli.bus
        );
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let env = Env {
        cli,
        runtime,
        lake,
        bus,
        progress,
    };
    let done = match command {
        Command::Validate { data } => validate(&env, data),
        Command::Produce {
            table,
            data,
            no_delay,
            seed,
            limit,
        } => produce(&env, table, data, no_delay, seed, limit),
        Command::Run(args) => run(&env, args),
        Command::Serve {
            addr,
            tokens,
            max_body_bytes,
            max_records,
            max_ingests,
            visible_timeout_s,
            durable_timeout_s,
            idle_timeout_s,
            state_dir,
            vacuum_retention_s,
        } => serve(&env, &addr, tokens, state_dir, vacuum_retention_s, {
            let mut limits = crate::gateway::Limits {
                max_body_bytes,
                max_records,
                max_ingests,
                visible_timeout: std::time::Duration::from_secs(visible_timeout_s),
                durable_timeout: std::time::Duration::from_secs(durable_timeout_s),
                ..crate::gateway::Limits::default()
            };
            limits.idle_timeout = idle_timeout_s
                .map_or_else(|| limits.idle_after_waits(), std::time::Duration::from_secs);
            limits
        }),
        Command::Rejects { table, limit } => rejects(&env, table, limit),
        Command::Vacuum { retention_s, table } => vacuum(&env, retention_s, &table),
        Command::Build {
            select,
            full_refresh,
            threads,
            report,
        } => build(&env, select, full_refresh, threads, report),
        Command::Test { layer, suite } => test(&env, layer, suite),
        Command::Compile {
            select,
            incremental,
            manifest,
        } => compile(&env, select, incremental, manifest),
        Command::GenerateSchema { check } => generate_schema(&env, check),
        Command::GenerateDags {
            out,
            check,
            project: project_file,
        } => generate_dags(&env, out, check, project_file),
        Command::GenerateData { scale, out, seed } => generate_data(scale, out, seed),
        Command::Keys {
            env: environment,
            command,
        } => {
            let project = load(&env.cli.idcards)?;
            keys::run(
                command,
                &environment,
                &project,
                project_dir(&env.cli),
                &env.lake,
                &env.runtime,
            )
        }
    };
    crate::memory::keep_freed_memory_until_exit();
    if done.is_err() {
        // A command that failed may leave work in flight: another table's lane, a Delta log
        // read on a blocking thread. Dropping the runtime would cancel it midway, and delta-rs's
        // log reader panics on a blocking thread whose task went ("TokioMultiThreadExecutor has
        // crashed", printed above the error in 6 of 10 runs with an empty CSV). The runtime is
        // left to the process's end, right after the error is printed: the work stops as in a
        // crash, which every stage is safe against (its leases are `flock`s the OS drops).
        let Env { runtime, .. } = env;
        std::mem::forget(runtime);
    }
    done
}

/// `--max-records`: a count from 1 to the gateway's ceiling.
fn records_limit(value: &str) -> std::result::Result<usize, String> {
    let ceiling = crate::gateway::RECORDS_CEILING;
    match value.parse::<usize>() {
        Ok(n) if (1..=ceiling).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {ceiling}")),
    }
}

/// `framework serve`: the gateway on `addr` until Ctrl-C or SIGTERM.
fn serve(
    env: &Env,
    addr: &str,
    tokens: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    vacuum_retention_s: u64,
    limits: crate::gateway::Limits,
) -> Result<()> {
    let Env {
        cli,
        runtime,
        lake,
        bus,
        ..
    } = env;
    let (project, models, checks) = load_all(cli)?;
    let env_token = std::env::var("FRAMEWORK_GATEWAY_TOKEN").ok();
    let tokens = crate::gateway::auth::Tokens::load(tokens.as_deref(), env_token.as_deref())?;
    let writes = if tokens.any() {
        "writes need a bearer token"
    } else {
        "no token configured: reads open, writes refused (set FRAMEWORK_GATEWAY_TOKEN)"
    };
    let keys = keyring(cli, &project)?;
    let lake = writing(lake, &project);
    let gateway = std::sync::Arc::new(
        crate::gateway::Gateway::new(project, models, checks, lake, bus.clone(), tokens, limits)
            .with_keys(keys)
            .with_state_dir(state_dir)
            .with_vacuum_retention(
                (vacuum_retention_s > 0)
                    .then(|| std::time::Duration::from_secs(vacuum_retention_s)),
            ),
    );
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}\n  hint: is another server on that port? try --addr 127.0.0.1:0"))?;
        let local = listener.local_addr()?;
        println!(
            "listening on http://{local} ({} tables, {} models; {writes}); GET / lists the routes",
            gateway.project.tables.len(),
            gateway.models.models.len()
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(term) => { term.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        };
        crate::gateway::serve(listener, gateway, shutdown)
            .await
            .context("serving")?;
        Ok(())
    })
}

/// `framework validate`: idcards, models and suites checked, and the source files present.
fn validate(env: &Env, data: PathBuf) -> Result<()> {
    let Env { cli, runtime, .. } = env;
    let project = load(&cli.idcards)?;
    println!(
        "ok: {} idcards valid ({})",
        project.tables.len(),
        project.names().join(", ")
    );
    if data.is_dir() {
        let missing: Vec<String> = project
            .tables
            .iter()
            .filter(|t| !data.join(&t.config.source.path).is_file())
            .map(|t| {
                format!(
                    "error: {}: source.path: `{}` is not in {}",
                    t.file.display(),
                    t.config.source.path,
                    data.display()
                )
            })
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}\n  hint: put the files in the data folder, or pass the folder that holds them with --data",
                missing.join("\n")
            );
        }
        println!("ok: every source file is in {}", data.display());
    } else {
        println!(
            "note: source files not checked: --data {} is not a folder",
            data.display()
        );
    }
    let models = load_models(&cli.models, &cli.vars, &project)?;
    let shapes = runtime
        .block_on(gold::check_sql(&models, &project))
        .map_err(|d| {
            anyhow::anyhow!("{d}\n{} problem(s) in {}", d.0.len(), cli.models.display())
        })?;
    println!(
        "ok: {} models valid ({})",
        models.models.len(),
        models.names().join(", ")
    );
    let checks = load_checks(&cli.expectations, &project, &models)?;
    checks.check_shapes(&shapes).map_err(|d| {
        anyhow::anyhow!(
            "{d}\n{} problem(s) in the quality suites and model tests",
            d.0.len()
        )
    })?;
    let suites: std::collections::BTreeSet<&str> =
        checks.checks.iter().map(|c| c.suite.as_str()).collect();
    println!(
        "ok: {} quality checks valid ({})",
        checks.checks.len(),
        suites.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// `framework produce`: one table's source file onto its topic, as a live stream.
fn produce(
    env: &Env,
    table: String,
    data: PathBuf,
    no_delay: bool,
    seed: u64,
    limit: Option<usize>,
) -> Result<()> {
    let Env { cli, bus, .. } = env;
    let progress = env.progress;
    let project = load(&cli.idcards)?;
    let Some(table) = project.table(&table) else {
        bail!(
            "unknown table `{table}`\n  hint: known tables: {}",
            project.names().join(", ")
        );
    };
    let options = ProduceOptions {
        delay: !no_delay,
        simulate: true,
        seed,
        limit,
        keys: keyring(cli, &project)?,
    };
    let bar = indicatif::ProgressBar::new(0);
    if !progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stats = source::produce(bus, table, &data, &options, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!(
        "produced {} messages for {} rows to {} ({} late, {} duplicated, {} broken, {} warned at the edge) in {:.2}s",
        stats.messages,
        stats.rows_read,
        table.topic(),
        stats.late,
        stats.duplicates,
        stats.broken,
        stats.warnings,
        stats.seconds
    );
    Ok(())
}

/// `framework run`: the pipeline for some tables or all, with its summary (and `--report`).
fn run(env: &Env, args: RunArgs) -> Result<()> {
    let Env {
        cli,
        runtime,
        lake,
        bus,
        ..
    } = env;
    let progress = env.progress;
    let RunArgs {
        table,
        all,
        data,
        no_produce,
        until,
        full_refresh,
        threads,
        resend,
        simulate,
        seed,
        batch_size,
        silver_batch_size,
        idle_ms,
        keep_log,
        report,
    } = args;
    if no_produce && until == Stage::Produce {
        bail!(
            "run --no-produce --until produce has nothing to do\n  hint: drop --no-produce to send the source files onto the topics, or pick a later --until"
        );
    }
    let (project, models, checks) = load_all(cli)?;
    let lake = &writing(lake, &project);
    let keys = keyring(cli, &project)?;
    let tables = if all { Vec::new() } else { table };
    let options = RunOptions {
        data,
        produce: !no_produce,
        resend,
        produce_options: ProduceOptions {
            delay: false,
            simulate,
            seed,
            limit: None,
            keys: keys.clone(),
        },
        bronze_options: BronzeOptions {
            batch_size: batch_size as usize,
            idle: std::time::Duration::from_millis(idle_ms),
            ..BronzeOptions::default()
        },
        silver_options: SilverOptions {
            batch_size: silver_batch_size,
            keys: keys.clone(),
        },
        until,
        progress,
        build_options: BuildOptions {
            full_refresh,
            progress,
            threads: threads.into(),
            keys,
            built: None,
        },
    };
    let reports = runtime.block_on(pipeline::run(
        &project, &models, &checks, &tables, bus, lake, &options,
    ))?;
    println!("{}", render_summary(&reports.tables));
    if !reports.models.is_empty() {
        println!("{}", gold::render_summary(&reports.models));
    }
    if !reports.checks.is_empty() {
        println!("{}", quality::render_summary(&reports.checks));
    }
    for skipped in &reports.skipped {
        println!("skipped {skipped}");
    }
    if until != Stage::Produce && !keep_log {
        give_back_stored(runtime, lake, bus, &project, &tables);
    }
    if let Some(path) = report {
        let json = serde_json::json!({
            "tables": reports.tables,
            "models": reports.models,
            "phases": reports.phases,
            "peak_rss_mib": pipeline::peak_rss_mib(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(failure) = reports.failure {
        bail!("run stopped: {failure}");
    }
    // Every message of a table rejected is a broken delivery, not a success.
    let all_rejected: Vec<String> = reports
        .tables
        .iter()
        .filter(|t| t.rejected > 0 && t.bronze == 0)
        .map(|t| format!("{} ({} message(s))", t.table, t.rejected))
        .collect();
    if !all_rejected.is_empty() {
        bail!(
            "every message was rejected for: {}\n  hint: `framework rejects --table <table>` shows the reasons and source lines",
            all_rejected.join(", ")
        );
    }
    Ok(())
}

/// At the end of a run, gives back the embedded log's disk space of the messages bronze has
/// stored for the `tables` it read (all when empty), as `framework vacuum` does: otherwise each
/// delivery would stay on disk twice, on the log and in bronze. A failure here fails nothing
/// (the run's data is in the lake): it is reported, and the next run or vacuum tries again.
fn give_back_stored(
    runtime: &tokio::runtime::Runtime,
    lake: &Lake,
    bus: &Bus,
    project: &Project,
    tables: &[String],
) {
    let chosen: Vec<&Table> = match tables.is_empty() {
        true => project.tables.iter().collect(),
        false => tables.iter().filter_map(|t| project.table(t)).collect(),
    };
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(pipeline::vacuum::release_stored(
        lake, bus, project, &chosen,
    ));
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "run: the embedded log's stored messages given back"
    );
    match outcome {
        Ok(released) if !released.is_empty() => println!("{}", given_back(&released)),
        Ok(_) => {}
        Err(e) => eprintln!(
            "warning: giving back the embedded log's disk space failed: {e}\n  hint: the run's \
             data is in the lake; `framework vacuum` tries again"
        ),
    }
}

/// The line that says how much of the embedded log a release gave back (bytes per topic).
fn given_back(released: &[(String, u64)]) -> String {
    let bytes = released.iter().map(|(_, bytes)| *bytes).sum();
    format!(
        "embedded log: {:.1} MiB of messages bronze has stored given back",
        mib(bytes)
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// `framework rejects`: a table's reject and quarantine rows.
fn rejects(env: &Env, table: String, limit: usize) -> Result<()> {
    let Env {
        cli, runtime, lake, ..
    } = env;
    let project = load(&cli.idcards)?;
    let Some(table) = project.table(&table) else {
        bail!(
            "unknown table `{table}`\n  hint: known tables: {}",
            project.names().join(", ")
        );
    };
    // A lake that never read the table has no rejects to show, and "0 rejected" would say
    // that nothing was lost.
    if runtime
        .block_on(lake.open(crate::lake::Layer::Bronze, table.name()))?
        .is_none()
    {
        bail!(
            "the lake at {} holds no bronze table `{}`: nothing was read into it yet, so there is nothing to show
  hint: is --lake right? Load the table first with `framework run --table {}`",
            cli.lake.display(),
            table.name(),
            table.name()
        );
    }
    print!(
        "{}",
        runtime.block_on(pipeline::rejects(lake, table, limit))?
    );
    Ok(())
}

/// `framework vacuum`: the removed files of the lake's tables (or of `only` these), deleted
/// once older than `retention_s`.
fn vacuum(env: &Env, retention_s: u64, only: &[String]) -> Result<()> {
    let Env {
        cli,
        runtime,
        lake,
        bus,
        ..
    } = env;
    let (project, models, _) = load_all(cli)?;
    let mut chosen = Vec::new();
    for name in only {
        let Some(table) = project.table(name) else {
            bail!(
                "unknown table `{name}`\n  hint: known tables: {}",
                project.names().join(", ")
            );
        };
        chosen.push(table);
    }
    let tables = if only.is_empty() {
        chosen.extend(project.tables.iter());
        pipeline::vacuum::lake_tables(&project, &models)
    } else {
        pipeline::vacuum::tables_of(chosen.iter().copied())
    };
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(tables.len() as u64);
    if !env.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // The tables that had files deleted, and how many.
    let mut deleted: Vec<(String, usize)> = Vec::new();
    let retention = std::time::Duration::from_secs(retention_s);
    runtime.block_on(pipeline::vacuum::vacuum(
        lake,
        &tables,
        retention,
        &mut |layer, table, files| {
            bar.inc(1);
            if files > 0 {
                deleted.push((format!("{}/{table}", layer.dir()), files));
            }
        },
    ))?;
    let released = runtime.block_on(pipeline::vacuum::release_stored(
        lake, bus, &project, &chosen,
    ))?;
    bar.finish_and_clear();
    println!(
        "vacuum: {} tables checked in {:.2}s, {} files deleted (removed from their table more than {retention_s} s ago)",
        tables.len(),
        started.elapsed().as_secs_f64(),
        deleted.iter().map(|(_, files)| files).sum::<usize>()
    );
    for (table, files) in deleted {
        println!("  {table}: {files}");
    }
    if !released.is_empty() {
        println!("{}", given_back(&released));
        for (topic, bytes) in released {
            println!("  {topic}: {:.1} MiB", mib(bytes));
        }
    }
    Ok(())
}

/// `framework build`: gold models.
fn build(
    env: &Env,
    select: Vec<String>,
    full_refresh: bool,
    threads: u16,
    report: Option<PathBuf>,
) -> Result<()> {
    let Env {
        cli, runtime, lake, ..
    } = env;
    let progress = env.progress;
    let project = load(&cli.idcards)?;
    let models = load_models(&cli.models, &cli.vars, &project)?;
    let selected = gold::select(&models, &select)?;
    // Gold reads what is in the lake: without this environment's keys it still builds, and a
    // model calling pii_decrypt fails saying the key is missing.
    let keys = keyring(cli, &project).unwrap_or_else(|e| {
        tracing::debug!("no PII keys for this build: {e}");
        std::sync::Arc::default()
    });
    let options = BuildOptions {
        full_refresh,
        progress,
        threads: threads.into(),
        keys,
        built: None,
    };
    let started = std::time::Instant::now();
    let reports = runtime.block_on(gold::build(lake, &models, &selected, &options))?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", gold::render_summary(&reports));
    if let Some(path) = report {
        // Models of one dependency wave are built at once: their seconds overlap, and the
        // build's wall time is `seconds`.
        let json = serde_json::json!({ "models": reports, "seconds": seconds });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `framework test`: quality suites and model tests.
fn test(env: &Env, layer: Option<SuiteLayer>, suite: Vec<String>) -> Result<()> {
    let Env {
        cli, runtime, lake, ..
    } = env;
    let (_, _, checks) = load_all(cli)?;
    let selected: Vec<&quality::Check> = checks
        .checks
        .iter()
        .filter(|c| layer.is_none_or(|l| c.layer == l))
        .filter(|c| suite.is_empty() || suite.contains(&c.suite))
        .collect();
    if selected.is_empty() {
        bail!(
            "no check selected\n  hint: suites are the files in {}",
            cli.expectations.display()
        );
    }
    let (ready, missing) = runtime.block_on(quality::runnable(lake, &selected))?;
    if ready.is_empty() {
        bail!(
            "none of the {} selected check(s) can run: the lake at {} holds none of the tables they read\n  hint: is --lake right? Load the tables first with `framework run --all`",
            selected.len(),
            cli.lake.display()
        );
    }
    let run_id = quality::new_run_id();
    let results = runtime.block_on(quality::run_checks(lake, &ready, &run_id))?;
    println!("{}", quality::render_summary(&results));
    println!(
        "run id {run_id}: results in {}",
        lake.location(crate::lake::Layer::Quality, crate::quality::RESULTS_TABLE)
    );
    for check in &missing {
        println!(
            "not run: {} (reads a table the lake does not have)",
            check.name
        );
    }
    if let Some(failure) = quality::failure_message(&results) {
        bail!("{failure}");
    }
    if !missing.is_empty() {
        bail!(
            "{} check(s) could not run: the tables they read are not in the lake at {}\n  hint: load them with `framework run --table <table>`, or select other checks with --suite / --layer",
            missing.len(),
            cli.lake.display()
        );
    }
    Ok(())
}

/// `framework compile`: the rendered SQL of models (and `--manifest`).
fn compile(
    env: &Env,
    select: Vec<String>,
    incremental: bool,
    manifest: Option<PathBuf>,
) -> Result<()> {
    let Env { cli, .. } = env;
    let project = load(&cli.idcards)?;
    let models = load_models(&cli.models, &cli.vars, &project)?;
    let selected = gold::select(&models, &select)?;
    let mut entries = Vec::new();
    for model in models.models.iter().filter(|m| selected.contains(&m.name)) {
        let sql = models
            .render(model, incremental)
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        println!(
            "-- {} ({}, {})\n{sql};\n",
            model.name,
            cli.models.join(&model.path).display(),
            model.config.materialized
        );
        entries.push(serde_json::json!({
            "name": model.name,
            "path": model.path,
            "materialized": model.config.materialized,
            "relation": model.relation(),
            "unique_key": model.config.unique_key,
            "sources": model.sources.iter().map(|(l, t)| format!("{l}.{t}")).collect::<Vec<_>>(),
            "sql": sql,
        }));
    }
    if let Some(path) = manifest {
        let json = serde_json::json!({ "models": entries });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `framework generate-schema`: the idcard JSON Schema written or checked.
fn generate_schema(env: &Env, check: bool) -> Result<()> {
    let Env { cli, .. } = env;
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
        std::fs::write(&path, schema).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `framework generate-dags`: the Airflow DAGs written or checked.
fn generate_dags(env: &Env, out: PathBuf, check: bool, project_file: PathBuf) -> Result<()> {
    let Env { cli, .. } = env;
    let project = load(&cli.idcards)?;
    let models = load_models(&cli.models, &cli.vars, &project)?;
    let defaults =
        crate::dags::DagDefaults::load(&project_file).map_err(|d| anyhow::anyhow!("{d}"))?;
    let files = crate::dags::generate(&project, &models, &defaults)
        .context("rendering the DAG templates")?;
    if check {
        let stale = crate::dags::check(&out, &files)
            .with_context(|| format!("reading {}", out.display()))?;
        if !stale.is_empty() {
            bail!(
                "stale DAG files in {}: {}\n  hint: run `framework generate-dags --out {}`",
                out.display(),
                stale.join(", "),
                out.display()
            );
        }
        println!(
            "ok: {} DAG files in {} are up to date",
            files.len(),
            out.display()
        );
    } else {
        let changed = crate::dags::write(&out, &files)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote {} DAG files to {} ({} changed{}{})",
            files.len(),
            out.display(),
            changed.len(),
            if changed.is_empty() { "" } else { ": " },
            changed.join(", ")
        );
    }
    Ok(())
}

/// `framework generate-data`: Olist-shaped CSVs at a scale.
fn generate_data(scale: f64, out: PathBuf, seed: u64) -> Result<()> {
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stats = crate::synth::generate(scale, seed, &out)
        .with_context(|| format!("writing {}", out.display()))?;
    for (file, rows) in stats.files {
        println!("{rows:>10}  {file}");
    }
    Ok(())
}
