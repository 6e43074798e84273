//! `framework run`: produce -> bronze -> silver per table.

use std::collections::BTreeSet;
use std::path::PathBuf;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::bronze::{self, BronzeOptions};
use crate::bus::Bus;
use crate::gold::{self, BuildOptions, ModelReport, Models};
use crate::idcard::Project;
use crate::lake::{Lake, Layer};
use crate::quality::{self, CheckResult, Checks, SuiteLayer};
use crate::silver::{self, SilverOptions};
use crate::source::{self, ProduceOptions};

use super::checks::{Arrival, Arrivals, EarlyChecks, Finished};
use super::{Error, Result, TableReport, deliveries};

/// The last stage to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Stage {
    /// The source files onto the topics, nothing consumed (a later `--no-produce` run, or
    /// another consumer, takes them from there).
    Produce,
    /// Produce, then ingest into bronze.
    Bronze,
    /// Up to silver.
    Silver,
    /// Up to gold, every layer's checks included.
    Gold,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Folder with the source files.
    pub data: PathBuf,
    /// Produce the source files onto the topics first.
    pub produce: bool,
    /// Produce a source file even when this lake already ingested the same content.
    pub resend: bool,
    pub produce_options: ProduceOptions,
    pub bronze_options: BronzeOptions,
    pub silver_options: SilverOptions,
    /// Stop after this stage.
    pub until: Stage,
    /// Show progress bars.
    pub progress: bool,
    pub build_options: BuildOptions,
}

/// What a run did, per table, per gold model and per quality check.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub tables: Vec<TableReport>,
    pub models: Vec<ModelReport>,
    pub checks: Vec<CheckResult>,
    /// Models and checks left out because a table they read is not in the lake yet.
    pub skipped: Vec<String>,
    /// Wall seconds of each phase, in order (`--report`, `scripts/bench --profile`).
    pub phases: Vec<(String, f64)>,
    /// Why the run stopped early: checks with action `fail` failed.
    pub failure: Option<String>,
}

/// Runs `tables` (all when empty) in dependency order, then the gold models that read them.
pub async fn run(
    project: &Project,
    models: &Models,
    checks: &Checks,
    tables: &[String],
    bus: &Bus,
    lake: &Lake,
    options: &RunOptions,
) -> Result<RunReport> {
    for name in tables {
        if project.table(name).is_none() {
            return Err(Error::UnknownTable {
                name: name.clone(),
                known: project.names().join(", "),
            });
        }
    }
    let plan = Plan::new(project, models, checks, tables, options)?;
    let layers = plan.layers.clone();
    let bars = MultiProgress::new();
    if !options.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let run_id = quality::new_run_id();
    // Bronze reads in this process what the producer appends to the embedded log.
    if let Bus::Embedded(log) = bus
        && options.produce
        && options.until >= Stage::Bronze
    {
        log.keep_for_reads();
    }
    let ran = run_lanes(
        plan, project, models, checks, bus, lake, options, &bars, &run_id,
    )
    .await?;
    finish(ran, &layers, lake, &run_id).await
}

/// What a run does, decided before it starts.
struct Plan {
    /// The run's tables, in the order the lanes take them ([`gold_first`]).
    tables: Vec<crate::idcard::Table>,
    /// The gold models to build; `None` when the run stops before gold.
    models: Option<BTreeSet<String>>,
    /// The lake names of the run's tables those models read (gold waits for them), and of
    /// those no model reads (refined beside gold).
    read: BTreeSet<String>,
    beside: BTreeSet<String>,
    /// The layers whose checks run as the run's tables arrive, and those checks.
    layers: Vec<SuiteLayer>,
    arriving: Vec<quality::Check>,
}

impl Plan {
    /// The plan of a run of `tables` (all when empty), every one of them known.
    fn new(
        project: &Project,
        models: &Models,
        checks: &Checks,
        tables: &[String],
        options: &RunOptions,
    ) -> Result<Self, gold::Error> {
        let loaded = |table: &str| tables.is_empty() || tables.iter().any(|t| t == table);
        let selected: Vec<crate::idcard::Table> = project
            .tables
            .iter()
            .filter(|t| loaded(t.name()))
            .cloned()
            .collect();
        let gold_models = match options.until >= Stage::Gold {
            true => {
                let selectors: Vec<String> =
                    tables.iter().map(|t| format!("source:{t}+")).collect();
                Some(gold::select(models, &selectors)?)
            }
            false => None,
        };
        let gold_reads: Option<BTreeSet<String>> = gold_models.as_ref().map(|selected| {
            selected
                .iter()
                .flat_map(|m| models.sources_read(m))
                .map(|(_, table)| table.clone())
                .collect()
        });
        let selected = gold_first(
            selected,
            gold_reads.as_ref(),
            options.produce.then_some(options.data.as_path()),
        );
        let (read, beside): (BTreeSet<String>, BTreeSet<String>) = selected
            .iter()
            .flat_map(|t| t.lake_names())
            .partition(|name| {
                gold_reads
                    .as_ref()
                    .is_some_and(|reads| reads.contains(name))
            });
        let mut layers = Vec::new();
        if options.until >= Stage::Bronze {
            layers.push(SuiteLayer::Bronze);
        }
        if options.until >= Stage::Silver {
            layers.push(SuiteLayer::Silver);
        }
        Ok(Self {
            arriving: of_layers(checks, &layers, &loaded),
            tables: selected,
            models: gold_models,
            read,
            beside,
            layers,
        })
    }
}

/// What the lanes and gold did.
struct Ran {
    /// Silver's reports in the run's table order, and what was left out.
    reports: Vec<TableReport>,
    skipped: Vec<String>,
    /// The stages the lanes went through (e.g. "produce, bronze, silver") and their wall
    /// seconds, until silver's lane ended.
    stages: String,
    seconds: f64,
    gold: Option<GoldStep>,
    /// The checks run as the tables arrived.
    arrivals: Arrivals,
}

/// Runs three lanes, each a stage over the tables in dependency order: one produces table after
/// table, one ingests each into bronze while it is produced, one refines each into silver once
/// its bronze is in (so a table's dimensions are refined before it). The stages of different
/// tables overlap on the cores. Gold starts once the run's tables its models read are in and
/// their checks passed; the silver of the tables no model reads, and their checks, run beside
/// it.
#[allow(clippy::too_many_arguments)] // the run's parts, passed along
async fn run_lanes(
    plan: Plan,
    project: &Project,
    models: &Models,
    checks: &Checks,
    bus: &Bus,
    lake: &Lake,
    options: &RunOptions,
    bars: &MultiProgress,
    run_id: &str,
) -> Result<Ran> {
    let started = std::time::Instant::now();
    let Plan {
        tables: selected,
        models: gold_models,
        read,
        beside,
        arriving,
        layers: _,
    } = plan;
    let capacity = selected.len().max(1);
    let (produced, to_ingest) =
        tokio::sync::mpsc::channel::<(crate::idcard::Table, Producing)>(capacity);
    let (ingested, mut to_refine) = tokio::sync::mpsc::channel::<TableReport>(capacity);
    let produce_lane = tokio::spawn(produce_lane(
        selected.clone(),
        bus.clone(),
        lake.clone(),
        options.clone(),
        bars.clone(),
        produced,
    ));
    let ingest_lane = tokio::spawn(ingest_lane(
        to_ingest,
        bus.clone(),
        lake.clone(),
        options.clone(),
        bars.clone(),
        ingested,
    ));
    let (arrivals, gold_may_start) = Arrivals::new(
        lake,
        run_id,
        arriving,
        &selected,
        gold_models.as_ref().map(|_| read),
    );
    let arrivals = std::sync::Mutex::new(arrivals);
    let arrivals_now = || {
        arrivals
            .lock()
            .expect("no panic while holding the arrivals")
    };
    let arrived = |arrival: Arrival<'_>| arrivals_now().arrive(arrival);
    let refine = async {
        let refined = refine_lane(
            &selected,
            &mut to_refine,
            project,
            lake,
            options,
            bars,
            &arrived,
        )
        .await;
        arrivals_now().close();
        (refined, started.elapsed().as_secs_f64())
    };
    let gold = async {
        let Some(selected) = gold_models else {
            return Ok::<_, Error>(None);
        };
        if gold_may_start.await.is_err() {
            return Ok(None);
        }
        let before = arrivals_now()
            .take_before_gold()
            .expect("gold's checks are taken once");
        // Unless a check with action `fail` failed; a build that fails keeps the checks'
        // results, which the run records before giving the error.
        let before = before.finish().await?;
        let built = match quality::failure_message(&before.results) {
            Some(_) => Ok(None),
            None => build_and_check(lake, models, selected, checks, run_id, options, &beside)
                .await
                .map(Some),
        };
        Ok(Some(GoldStep { before, built }))
    };
    let ((refined, seconds), gold) = tokio::join!(refine, gold);
    // After an error here, the other lanes find their channel closed once their current table
    // is done, and stop (aborting them would cut a write short as the runtime shuts down).
    drop(to_refine);
    // The earlier lane's error comes first: a table missing later may only be its echo.
    for lane in [produce_lane, ingest_lane] {
        match lane.await {
            Ok(result) => result?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    let (reports, skipped) = refined?;
    let gold = gold?;
    let stages: Vec<&str> = [
        (options.produce, "produce"),
        (options.until >= Stage::Bronze, "bronze"),
        (options.until >= Stage::Silver, "silver"),
    ]
    .into_iter()
    .filter_map(|(ran, stage)| ran.then_some(stage))
    .collect();
    Ok(Ran {
        reports,
        skipped,
        stages: stages.join(", "),
        seconds,
        gold,
        arrivals: arrivals
            .into_inner()
            .expect("no panic while holding the arrivals"),
    })
}

/// The run's report: the lanes' tables, the checks of `layers` once they finished, gold's
/// models and checks (those that also read a table refined beside gold run now), then every
/// layer's results recorded in one commit. A gold build that failed is the run's error, once
/// the checks that ran are recorded.
async fn finish(ran: Ran, layers: &[SuiteLayer], lake: &Lake, run_id: &str) -> Result<RunReport> {
    let mut run = RunReport {
        tables: ran.reports,
        skipped: ran.skipped,
        phases: vec![(ran.stages, ran.seconds)],
        ..RunReport::default()
    };
    let waited = std::time::Instant::now();
    let (before, gold) = match ran.gold {
        Some(step) => (Some(step.before), step.built),
        None => (None, Ok(None)),
    };
    let finished = ran.arrivals.finish(before).await?;
    record_checks(&mut run, layers, finished, waited.elapsed().as_secs_f64());
    let gold = match gold {
        Ok(gold) => gold,
        Err(e) => {
            quality::record_results(lake, &run.checks).await?;
            return Err(e);
        }
    };
    if let Some(mut built) = gold {
        run.skipped.extend(built.skipped);
        run.models = built.models;
        run.phases.push(("gold".into(), built.seconds));
        let started = std::time::Instant::now();
        let late = EarlyChecks::new(lake, run_id, built.late, &[])
            .finish()
            .await?;
        built.checks.results.extend(late.results);
        built.checks.missing.extend(late.missing);
        let checks_s = built.checks_s + started.elapsed().as_secs_f64();
        record_checks(&mut run, &[SuiteLayer::Gold], built.checks, checks_s);
    }
    quality::record_results(lake, &run.checks).await?;
    Ok(run)
}

/// What gold did: the checks it waited for, and the models and their checks unless one of
/// those failed.
struct GoldStep {
    before: Finished,
    built: Result<Option<GoldBuilt>>,
}

struct GoldBuilt {
    models: Vec<ModelReport>,
    /// Models left out: a table they read is not in the lake.
    skipped: Vec<String>,
    checks: Finished,
    /// Gold checks that also read a table refined beside gold: run once the run's silver is in.
    late: Vec<quality::Check>,
    /// Wall seconds of the build, and of the checks left after it.
    seconds: f64,
    checks_s: f64,
}

/// Builds the `selected` models whose sources are in the lake, with the gold checks that read
/// only them and tables already in; those reading a table refined `beside` gold are left for
/// after the run's silver ([`GoldBuilt::late`]).
async fn build_and_check(
    lake: &Lake,
    models: &Models,
    mut selected: BTreeSet<String>,
    checks: &Checks,
    run_id: &str,
    options: &RunOptions,
    beside: &BTreeSet<String>,
) -> Result<GoldBuilt> {
    let mut skipped = Vec::new();
    for (model, source) in gold::missing_sources(lake, models, &selected).await? {
        selected.remove(&model);
        skipped.push(format!("model {model}: {source} is not loaded yet"));
    }
    let started = std::time::Instant::now();
    let built = |model: &str| selected.contains(model);
    let (late, gold): (Vec<quality::Check>, Vec<quality::Check>) =
        of_layers(checks, &[SuiteLayer::Gold], &built)
            .into_iter()
            .partition(|c| {
                c.relations()
                    .iter()
                    .any(|(schema, name)| schema != "gold" && beside.contains(name))
            });
    let mut early = EarlyChecks::for_models(lake, run_id, gold, &selected);
    let models = build_gold(lake, models, &selected, options, &mut early).await?;
    let seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let checks = early.finish().await?;
    Ok(GoldBuilt {
        models,
        skipped,
        checks,
        late,
        seconds,
        checks_s: started.elapsed().as_secs_f64(),
    })
}

/// A source file larger than this keeps its place in the run's order (see [`gold_first`]).
const SMALL_SOURCE_BYTES: u64 = 16 << 20;

/// `tables` (in dependency order) with the small deliveries no model reads last (a source
/// file in `data` of at most [`SMALL_SOURCE_BYTES`]): gold starts once the tables it reads are
/// in, and their silver runs beside it. A large one keeps its place, where its produce and
/// bronze overlap the silver of the tables before it: moved last at scale 10, geolocation's
/// 10 M rows took the run from 33.5-34.0 to 38.0-46.5 s.
fn gold_first(
    tables: Vec<crate::idcard::Table>,
    gold_reads: Option<&BTreeSet<String>>,
    data: Option<&std::path::Path>,
) -> Vec<crate::idcard::Table> {
    let (Some(reads), Some(data)) = (gold_reads, data) else {
        return tables;
    };
    let small = |table: &crate::idcard::Table| {
        std::fs::metadata(data.join(&table.config.source.path))
            .is_ok_and(|file| file.len() <= SMALL_SOURCE_BYTES)
    };
    let mut needed: BTreeSet<String> = tables
        .iter()
        .filter(|t| t.lake_names().iter().any(|n| reads.contains(n)))
        .map(|t| t.name().to_owned())
        .collect();
    // A table comes after the tables it enriches from, so walking back finds them all.
    for table in tables.iter().rev() {
        if needed.contains(table.name()) {
            needed.extend(table.depends_on.iter().cloned());
        }
    }
    let (mut first, then): (Vec<_>, Vec<_>) = tables
        .into_iter()
        .partition(|t| needed.contains(t.name()) || !small(t));
    first.extend(then);
    first
}

/// Builds the `selected` models; each model's checks start once the models they read are
/// built, while the models after them are still being built.
async fn build_gold(
    lake: &Lake,
    models: &Models,
    selected: &BTreeSet<String>,
    options: &RunOptions,
    checks: &mut EarlyChecks,
) -> Result<Vec<ModelReport>> {
    let (built, mut announced) = tokio::sync::mpsc::unbounded_channel();
    let build_options = gold::BuildOptions {
        built: Some(built),
        ..options.build_options.clone()
    };
    let build = gold::build(lake, models, selected, &build_options);
    tokio::pin!(build);
    let reports = loop {
        tokio::select! {
            reports = &mut build => break reports?,
            Some(model) = announced.recv() => checks.done(std::slice::from_ref(&model)),
        }
    };
    while let Ok(model) = announced.try_recv() {
        checks.done(std::slice::from_ref(&model));
    }
    Ok(reports)
}

/// How many deliveries are refined into silver at once (large ones of different kinds only,
/// see [`Large`]): a small one's silver is mostly fixed costs (log reads, planning, commits),
/// which two overlap on the two cores.
const SILVER_AT_ONCE: usize = 2;

/// A large delivery (over [`SMALL_DELIVERY`] messages) holds a window of its rows while it is
/// refined, so two of the same kind are not refined at once. An APPEND table's windows are
/// half as large as the others' (see [`crate::silver::SilverOptions::batch_size`]), which leaves
/// room for one large delivery of a DIFF or FULL table beside it. At scale 10 the five 1 M-row
/// DIFF tables waited for geolocation's 10 M rows (APPEND), refined on one core: beside it, with
/// gold's models on a task each, the run took 27.4-27.8 s and 1.66-1.69 GiB against 30.6-30.9 s
/// and 1.34-1.41 GiB before both (two alternations, 2026-12-05); at scale 1 the first delivery
/// stayed at 2.56-2.79 s (three alternations) and its peak fell to 0.75-0.82 GiB from 0.85-0.87
/// (geolocation's 1 M rows in two windows). Beside it with whole windows, the same scale-10 run
/// peaked at 2.08 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Large {
    Append,
    Other,
}

/// A delivery of more messages than this is large (see [`Large`]). Measured at scale 10 before
/// the kinds, two large tables at once took 72.6 s and 3.24 GiB where one at a time took 58.5 s
/// and 2.73 GiB. A small one may run beside a large one: at scale 1, the small tables ingested
/// while geolocation's silver ran waited for it before; beside it the first delivery took
/// 2.93-2.96 s instead of 2.98-3.06 s (three alternations, 2026-12-05), peak 704-763 MiB
/// instead of 659-724, scale 10 unchanged (31.8-32.9 s, 1.39-1.45 GiB). The Kaggle-sized
/// tables (about 100 000 rows each) are small: at scale 1, six runs of each binary alternated
/// (2026-12-04 19:40), 200 000 instead of 50 000 took the first delivery from 3.51-4.40 s to
/// 3.49-4.01 s (the tables after geolocation refined two at a time instead of one by one on one
/// core), at the same peak; scale 10, whose tables are larger, did not change (46.9 vs 48.2 s,
/// 1.48 vs 1.42 GiB).
const SMALL_DELIVERY: u64 = 200_000;

/// Refines each table into silver once its bronze is in, up to [`SILVER_AT_ONCE`] deliveries
/// at a time, at most one large one of each kind (see [`Large`]); a table waits for the
/// silver of the tables it enriches from when they are in this run, not for their `latest_by`
/// tables, which enrichment does not read. A small delivery's `latest_by` rebuild leaves its
/// slot to the next table (see [`Rebuilding`]). Each table `arrived` once
/// ingested (with its size), then by its names in the lake: its own and its tombstones' once
/// silver committed them, its `latest_by` tables' once they are rebuilt.
/// Returns the reports in the run's table order and the produce stage's notes. After an error
/// no table is started and those running are waited for (aborting one would cut a write
/// short); the first error is returned.
async fn refine_lane(
    selected: &[crate::idcard::Table],
    to_refine: &mut tokio::sync::mpsc::Receiver<TableReport>,
    project: &Project,
    lake: &Lake,
    options: &RunOptions,
    bars: &MultiProgress,
    arrived: &(dyn Fn(Arrival<'_>) + Sync),
) -> Result<(Vec<TableReport>, Vec<String>)> {
    let position = |name: &str| selected.iter().position(|t| t.name() == name);
    let project = std::sync::Arc::new(project.clone());
    let mut reports: Vec<Option<TableReport>> = vec![None; selected.len()];
    let mut skipped = Vec::new();
    // Ingested, not started: waiting for a slot or for a table they enrich from.
    let mut waiting: Vec<(usize, TableReport)> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    // A running table whose own silver is in, its `latest_by` tables still being rebuilt.
    let (table_in, mut tables_in) = tokio::sync::mpsc::unbounded_channel::<(usize, Rebuilding)>();
    let mut closed = false;
    let mut failed: Option<Error> = None;
    let large = |report: &TableReport| report.consumed > SMALL_DELIVERY;
    let kind = |i: usize, report: &TableReport| {
        large(report).then(|| match selected[i].mode() {
            crate::idcard::Mode::Append => Large::Append,
            crate::idcard::Mode::Diff | crate::idcard::Mode::Full => Large::Other,
        })
    };
    let mut large_running: Vec<Large> = Vec::new();
    // Tables whose own silver is in, and the running tables that hold a slot (not those whose
    // rebuild gave it up). A set, not a count: a table's announcement may be taken after its
    // end.
    let mut own_in = vec![false; selected.len()];
    let mut in_slot: BTreeSet<usize> = BTreeSet::new();
    loop {
        while failed.is_none() && in_slot.len() < SILVER_AT_ONCE {
            let ready = waiting.iter().position(|(i, report)| {
                kind(*i, report).is_none_or(|kind| !large_running.contains(&kind))
                    && selected[*i]
                        .depends_on
                        .iter()
                        .all(|dim| position(dim).is_none_or(|d| own_in[d]))
            });
            let Some(ready) = ready else { break };
            let (i, report) = waiting.remove(ready);
            if options.until < Stage::Silver {
                arrived(Arrival::In(&selected[i].lake_names()));
                own_in[i] = true;
                reports[i] = Some(report);
                continue;
            }
            large_running.extend(kind(i, &report));
            let table = selected[i].clone();
            let spinner = bars
                .add(ProgressBar::new_spinner().with_message(format!("{} silver", table.name())));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let (lake, project, silver_options) = (
                lake.clone(),
                project.clone(),
                options.silver_options.clone(),
            );
            let table_in = table_in.clone();
            let rebuilds = Rebuilding::of(&selected[i], large(&report));
            in_slot.insert(i);
            running.spawn(async move {
                let announce = move || {
                    let _ = table_in.send((i, rebuilds));
                };
                let stats =
                    silver::refine_announcing(&lake, &project, &table, &silver_options, announce)
                        .await;
                spinner.finish_and_clear();
                (i, report, stats)
            });
        }
        if running.is_empty() && (closed || failed.is_some()) {
            // What still waits can only wait for a table that never came: a lane before
            // this one stopped, and the run reports its error.
            break;
        }
        tokio::select! {
            message = to_refine.recv(), if !closed && failed.is_none() => match message {
                Some(report) => {
                    skipped.extend(report.produce_skipped.clone());
                    let i = position(&report.table).expect("the lanes carry the run's tables");
                    arrived(Arrival::Ingested { table: &report.table, large: large(&report) });
                    waiting.push((i, report));
                }
                None => closed = true,
            },
            Some((i, rebuilds)) = tables_in.recv() => {
                own_in[i] = true;
                if rebuilds == Rebuilding::Aside {
                    in_slot.remove(&i);
                }
                arrived(Arrival::In(&selected[i].refined_names()));
            }
            Some(joined) = running.join_next() => {
                let (i, mut report, stats) =
                    joined.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                in_slot.remove(&i);
                if let Some(kind) = kind(i, &report) {
                    large_running.retain(|running| *running != kind);
                }
                match stats {
                    Ok(stats) => {
                        report.quarantined = stats.quarantined;
                        report.dropped = stats.dropped;
                        // Plus the edge's (PII columns), counted when the table was produced.
                        report.warnings += stats.warnings.values().sum::<u64>();
                        report.silver = stats.rows_after;
                        report.silver_s = stats.seconds;
                        own_in[i] = true;
                        arrived(Arrival::In(&selected[i].lake_names()));
                        reports[i] = Some(report);
                    }
                    Err(e) => {
                        failed.get_or_insert(e.into());
                    }
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok((reports.into_iter().flatten().collect(), skipped)),
    }
}

/// What a table's slot in the silver lane does once its own silver is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuilding {
    /// Nothing left, or the rebuild of its `latest_by` tables in the slot: after a large
    /// delivery, whose table is large too (a rebuild reads all of it).
    InSlot,
    /// The `latest_by` rebuild of a small delivery, beside the next table, which takes the
    /// slot: only what reads a `latest_by` table waits for the rebuild, while the tables after
    /// it (those that enrich from it among them) may be on gold's path.
    Aside,
}

impl Rebuilding {
    fn of(table: &crate::idcard::Table, large: bool) -> Self {
        match table.config.latest_by.is_empty() || large {
            true => Self::InSlot,
            false => Self::Aside,
        }
    }
}

/// Produces each of `tables` in turn (when the run produces), handing each table's report to
/// the ingest lane once its messages are on the topic.
async fn produce_lane(
    tables: Vec<crate::idcard::Table>,
    bus: Bus,
    lake: Lake,
    options: RunOptions,
    bars: MultiProgress,
    produced: tokio::sync::mpsc::Sender<(crate::idcard::Table, Producing)>,
) -> Result<()> {
    // The delivery records, committed in order by one task while the lane goes on: those
    // that queue up while a commit runs share the next one.
    let (to_record, queued) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_deliveries(lake.clone(), queued));
    let lane = async {
        for table in tables {
            let (finished, producing) = tokio::sync::oneshot::channel();
            if produced.send((table.clone(), producing)).await.is_err() {
                // A later lane stopped on an error, which the run reports.
                break;
            }
            let report = if options.produce {
                produce_delivery(&table, &bus, &lake, &options, &bars, &to_record).await?
            } else {
                TableReport {
                    table: table.name().to_owned(),
                    ..TableReport::default()
                }
            };
            // The ingest lane may have stopped on an error, which the run reports.
            let _ = finished.send(report);
        }
        Ok(())
    }
    .await;
    // Also after an error: the records queued are committed, not cut short.
    drop(to_record);
    lane.and(joined(recorder).await)
}

/// A delivery that reached the topic, to be recorded under the lease it was checked under.
struct Sent {
    delivery: deliveries::Delivery,
    messages: u64,
    /// Held until the record is committed.
    _lease: crate::lease::Lease,
}

/// Records each delivery `queued`, in order, those waiting together in one commit; each lease
/// is held until its record is committed. A failed commit does not stop the records after it
/// (their files are on the topic too); the first error is returned once the queue closes, after
/// the record is compacted ([`deliveries::compact`]) when this run added to it.
async fn record_deliveries(
    lake: Lake,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Sent>,
) -> Result<()> {
    let mut first_error = Ok(());
    let mut compact = false;
    while let Some(sent) = queued.recv().await {
        let mut group = vec![sent];
        while let Ok(sent) = queued.try_recv() {
            group.push(sent);
        }
        crate::fault::crash_point("deliveries-before-record");
        let started = std::time::Instant::now();
        let records: Vec<_> = group.iter().map(|s| (&s.delivery, s.messages)).collect();
        let recorded = deliveries::record(&lake, &records).await;
        tracing::debug!(
            tables = ?group.iter().map(|s| s.delivery.table.as_str()).collect::<Vec<_>>(),
            seconds = started.elapsed().as_secs_f64(),
            "produce: deliveries recorded"
        );
        // The leases with them.
        drop(group);
        if first_error.is_ok() {
            first_error = recorded;
        }
        compact = true;
    }
    if compact {
        // Housekeeping: a failure leaves the records as they are, still read right.
        match deliveries::compact(&lake).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "produce: deliveries record compacted"),
            Err(e) => tracing::warn!("compacting the deliveries record: {e}"),
        }
    }
    first_error
}

/// Sends `table`'s source file unless the same file was delivered before (checked and
/// recorded under the table's delivery lease: two runs never both send a new file). The record
/// is left to the recorder, `to_record`, with the lease.
async fn produce_delivery(
    table: &crate::idcard::Table,
    bus: &Bus,
    lake: &Lake,
    options: &RunOptions,
    bars: &MultiProgress,
    to_record: &tokio::sync::mpsc::UnboundedSender<Sent>,
) -> Result<TableReport> {
    let mut report = TableReport {
        table: table.name().to_owned(),
        ..TableReport::default()
    };
    let started = std::time::Instant::now();
    let lease = lake
        .lease(Layer::Meta, &format!("deliveries-{}", table.name()))
        .await?;
    let delivery = deliveries::fingerprint(table, &options.data)?;
    let done = if options.resend {
        None
    } else {
        deliveries::delivered(lake, &delivery).await?
    };
    tracing::debug!(
        table = table.name(),
        seconds = started.elapsed().as_secs_f64(),
        "produce: delivery checked"
    );
    if let Some(at) = done {
        report.produce_skipped = Some(format!(
            "produce {}: {} was already ingested unchanged ({} bytes, at {at}); not sent again (--resend sends it)",
            table.name(),
            delivery.file,
            delivery.bytes
        ));
        return Ok(report);
    }
    let bar = bars.add(bar(table.name(), "produce"));
    let stats = {
        let (bus, table, options, bar) = (bus.clone(), table.clone(), options.clone(), bar.clone());
        joined(tokio::task::spawn_blocking(move || {
            source::produce(
                &bus,
                &table,
                &options.data,
                &options.produce_options,
                &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )
        }))
        .await?
    };
    bar.finish_and_clear();
    // The recorder ends only after this lane: it is still there to take the record.
    let _ = to_record.send(Sent {
        delivery,
        messages: stats.messages,
        _lease: lease,
    });
    report.rows_read = stats.rows_read;
    report.produced = stats.messages;
    report.warnings = stats.warnings;
    report.produce_s = stats.seconds;
    Ok(report)
}

/// The result of a spawned task (its panic goes on).
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    task.await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// A table handed to the ingest lane as its producing starts: its report once every message is
/// on the topic (the sender dropped: producing failed, and the produce lane says why).
type Producing = tokio::sync::oneshot::Receiver<TableReport>;

/// How often bronze looks for whole batches on the topic of a table being produced.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Ingests each table into bronze in turn, handing each table's report to the refine lane once
/// its bronze is in. On the embedded log, bronze follows the producer: the whole batches it
/// has appended are stored while it goes on, so producing and bronze of a large file overlap
/// on the two cores; the rest once it is done.
async fn ingest_lane(
    mut produced: tokio::sync::mpsc::Receiver<(crate::idcard::Table, Producing)>,
    bus: Bus,
    lake: Lake,
    options: RunOptions,
    bars: MultiProgress,
    ingested: tokio::sync::mpsc::Sender<TableReport>,
) -> Result<()> {
    // Unless the run stops after producing.
    let ingests = options.until >= Stage::Bronze;
    while let Some((table, mut producing)) = produced.recv().await {
        let bar = match ingests {
            true => bars.add(bar(table.name(), "bronze")),
            false => ProgressBar::hidden(),
        };
        let progress = |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let mut stats = bronze::BronzeStats::default();
        // The log bronze follows while the producer appends (none on Kafka, nor when the run
        // stops after producing).
        let mut follow = match &bus {
            Bus::Embedded(log) if ingests => Some(log),
            _ => None,
        };
        let produced = loop {
            tokio::select! {
                biased;
                finished = &mut producing => break finished.ok(),
                () = tokio::time::sleep(FOLLOW_EVERY), if follow.is_some() => {
                    let log = follow.expect("the branch runs only while following");
                    match bronze::ingest_whole_batches(
                        log,
                        &lake,
                        &table,
                        &options.bronze_options,
                        &progress,
                    )
                    .await
                    {
                        Ok(more) => stats += more,
                        // Following is only a head start: e.g. the producer repairing a tail
                        // that a crash tore, while this pass reads. The pass after the
                        // producer reads everything again and reports a lasting error.
                        Err(e) => {
                            tracing::debug!(table = table.name(), error = %e, "bronze: stopped following the producer");
                            follow = None;
                        }
                    }
                }
            }
        };
        let Some(mut report) = produced else {
            // Producing failed: the produce lane reports why.
            bar.finish_and_clear();
            break;
        };
        if ingests {
            stats +=
                bronze::ingest(&bus, &lake, &table, &options.bronze_options, &progress).await?;
        }
        bar.finish_and_clear();
        report.consumed = stats.messages;
        report.bronze = stats.rows;
        report.rejected = stats.rejected;
        report.bronze_s = stats.seconds;
        if ingested.send(report).await.is_err() {
            // The refine lane stopped on an error, which the run reports.
            break;
        }
    }
    Ok(())
}

/// The checks of `layers` on the tables `wanted` (and the layers' query checks), freshness
/// checks aside: freshness is about the schedule, not the data just written (`framework test`
/// checks it).
fn of_layers(
    checks: &Checks,
    layers: &[SuiteLayer],
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<quality::Check> {
    checks
        .checks
        .iter()
        .filter(|c| layers.contains(&c.layer) && c.table.as_deref().is_none_or(wanted))
        .filter(|c| !matches!(c.rule, quality::Rule::Fresh { .. }))
        .cloned()
        .collect()
}

/// Adds the checks' results to `run` with the wall `seconds` spent waiting for them as a
/// phase; a check with action `fail` that failed adds to the run's failure.
fn record_checks(run: &mut RunReport, layers: &[SuiteLayer], finished: Finished, seconds: f64) {
    for check in finished.missing {
        run.skipped.push(format!(
            "check {check}: reads a table that is not loaded yet"
        ));
    }
    if let Some(failure) = quality::failure_message(&finished.results) {
        run.failure = Some(match run.failure.take() {
            Some(before) => format!("{before}\n{failure}"),
            None => failure,
        });
    }
    run.checks.extend(finished.results);
    if layers.is_empty() {
        return;
    }
    let names: Vec<String> = layers
        .iter()
        .map(|l| format!("{l:?}").to_lowercase())
        .collect();
    run.phases
        .push((format!("{} checks", names.join(" and ")), seconds));
}

fn bar(table: &str, stage: &str) -> ProgressBar {
    let bar = ProgressBar::new(0).with_message(format!("{table} {stage}"));
    // produce counts source bytes, the other stages messages.
    let counts = if stage == "produce" {
        "{binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}"
    } else {
        "{pos}/{len} {per_sec}"
    };
    bar.set_style(
        ProgressStyle::with_template(&format!("{{msg:24}} [{{bar:40}}] {counts} eta {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_tables_gold_reads_come_first_and_after_what_they_enrich_from() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = crate::idcard::load_dir(&repo.join("idcards")).unwrap();
        let models = Models::load(&repo.join("models"), &project, BTreeMap::new()).unwrap();
        let reads: BTreeSet<String> = models
            .models
            .iter()
            .flat_map(|m| models.sources_read(&m.name))
            .map(|(_, table)| table.clone())
            .collect();
        let names = |tables: &[crate::idcard::Table]| -> Vec<String> {
            tables.iter().map(|t| t.name().to_owned()).collect()
        };
        let sample = repo.join("data/olist_sample");
        let ordered = names(&gold_first(
            project.tables.clone(),
            Some(&reads),
            Some(&sample),
        ));
        let unread: Vec<&String> = ordered.iter().filter(|t| !reads.contains(*t)).collect();
        // geolocation, payments and customer_profiles: no model reads them.
        assert_eq!(unread.len(), 3, "{ordered:?}");
        let first_unread = ordered.iter().position(|t| !reads.contains(t)).unwrap();
        assert!(
            ordered[first_unread..].iter().all(|t| !reads.contains(t)),
            "{ordered:?}"
        );
        let position = |name: &str| ordered.iter().position(|t| t == name).unwrap();
        for table in &project.tables {
            for dim in &table.depends_on {
                assert!(position(dim) < position(table.name()), "{ordered:?}");
            }
        }
        // Without gold, the dependency order as it is.
        assert_eq!(
            names(&gold_first(project.tables.clone(), None, Some(&sample))),
            names(&project.tables)
        );
        // A large source file keeps its place: geolocation over 16 MiB.
        let large = tempfile::tempdir().unwrap();
        for table in &project.tables {
            let path = large.path().join(&table.config.source.path);
            let file = std::fs::File::create(&path).unwrap();
            if table.name() == "geolocation" {
                file.set_len(SMALL_SOURCE_BYTES + 1).unwrap();
            }
        }
        let ordered = names(&gold_first(
            project.tables.clone(),
            Some(&reads),
            Some(large.path()),
        ));
        let position = |name: &str| ordered.iter().position(|t| t == name).unwrap();
        assert!(position("geolocation") < position("reviews"), "{ordered:?}");
        assert_eq!(
            ordered.last().map(String::as_str),
            Some("payments"),
            "{ordered:?}"
        );
    }
}
