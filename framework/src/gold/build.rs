//! Materializes models on DataFusion: sources and stored models are registered from the lake,
//! views are created in the session, tables are written whole and incremental models merged.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::{ArrayData, ArrayRef, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::MemorySchemaProvider;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};

use crate::lake::{Changes, Lake, Layer, LiveFiles, collect_apart, every_core_per_query, session};
use crate::silver::sql::{ident, key_match};

use super::config::Materialized;
use super::project::{Model, Models};
use super::{Error, Result};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild incremental models whole instead of merging the changed window.
    pub full_refresh: bool,
    /// Show a spinner with the model being built.
    pub progress: bool,
    /// Stored models of one dependency wave built at once (each holds its joins in memory) when
    /// their sources are large (see [`SMALL_SOURCES_BYTES`]).
    pub threads: usize,
    /// The keys `pii_decrypt(column)` decrypts with (none: it fails, naming the missing key).
    pub keys: std::sync::Arc<crate::pii::Keyring>,
    /// Told the name of each selected model once its table is final (built, or kept as it
    /// was), while the models after it are still being built.
    pub built: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            full_refresh: false,
            progress: false,
            threads: 2,
            keys: std::sync::Arc::default(),
            built: None,
        }
    }
}

/// What building one stored model did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    pub model: String,
    pub materialized: Materialized,
    /// Whether only the changed window was computed and merged.
    pub incremental: bool,
    /// Not built: nothing it reads changed since its last build (see [`Reads`]).
    pub unchanged: bool,
    /// Rows the model's query returned.
    pub rows_computed: u64,
    /// Rows in the table afterwards.
    pub rows: u64,
    pub seconds: f64,
}

/// Builds the `selected` models (and creates the views and CTEs they read); stored models they
/// read that are not selected are read from the lake as they are.
pub async fn build(
    lake: &Lake,
    models: &Models,
    selected: &BTreeSet<String>,
    options: &BuildOptions,
) -> Result<Vec<ModelReport>> {
    // One gold build at a time: models read each other's tables.
    let _lease = lake.lease(Layer::Gold, "_build").await?;
    let ctx = session();
    crate::pii::udf::register(&ctx, &options.keys);
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for name in selected {
        needed.insert(name);
        needed.extend(models.ancestors(name).iter().map(|m| m.name.as_str()));
    }
    let needed: Vec<&Model> = models
        .models
        .iter()
        .filter(|m| needed.contains(m.name.as_str()))
        .collect();
    let (mut versions, snapshots, source_bytes) = register_sources(lake, &ctx, &needed).await?;
    let small = small_sources_bytes()?;
    let large = source_bytes > small;
    let query_partitions = query_partitions_for(&ctx, large);
    tracing::debug!(
        source_bytes,
        large,
        query_partitions,
        "gold: sources registered"
    );
    let shared = shared_ephemerals(models, &needed, selected);
    // Stored models built by this run: what reads them is built again too.
    let mut rebuilt: BTreeSet<String> = BTreeSet::new();

    let spinner = indicatif::ProgressBar::new_spinner();
    if options.progress {
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    } else {
        spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // In waves: a wave holds every model whose stored and view ancestors are done, and builds
    // its stored models at once (each is a handful of small queries and a commit: one alone
    // leaves a core idle).
    // What each model waits for: its ancestors that are not inlined.
    let waits_for: Vec<(&Model, Vec<&str>)> = needed
        .iter()
        .map(|&m| {
            let ancestors = models.ancestors(&m.name).into_iter();
            let waited = ancestors
                .filter(|a| a.config.materialized != Materialized::Ephemeral)
                .map(|a| a.name.as_str());
            (m, waited.collect())
        })
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut reports = Vec::new();
    while done.len() < needed.len() {
        let mut wave: Vec<&Model> = waits_for
            .iter()
            .filter(|(m, _)| !done.contains(m.name.as_str()))
            .filter(|(_, waited)| waited.iter().all(|a| done.contains(a)))
            .map(|(m, _)| *m)
            .collect();
        if wave.is_empty() {
            // Not expected (a project with a cycle does not load); the project order is safe.
            wave.extend(needed.iter().find(|m| !done.contains(m.name.as_str())));
        }
        let mut building = Vec::new();
        for &model in &wave {
            match model.config.materialized {
                Materialized::Ephemeral => {}
                Materialized::View => {
                    let sql = models.render(model, false).map_err(Error::Models)?;
                    ctx.sql(&format!("CREATE VIEW {} AS {sql}", model.relation()))
                        .await
                        .map_err(|source| query_error(models, model, source))?;
                }
                Materialized::Table | Materialized::Incremental => {
                    if selected.contains(&model.name) {
                        building.push(model);
                    } else {
                        let Some(version) = lake
                            .register_version(&ctx, Layer::Gold, &model.name, &model.relation())
                            .await?
                        else {
                            return Err(Error::NotBuilt {
                                model: model.name.clone(),
                            });
                        };
                        versions
                            .insert(model.relation(), (Layer::Gold, model.name.clone(), version));
                    }
                }
            }
        }
        if !building.is_empty() {
            let names: Vec<&str> = building.iter().map(|m| m.name.as_str()).collect();
            spinner.set_message(format!("gold {}", names.join(", ")));
        }
        let built: Vec<(ModelReport, Option<i64>)> =
            futures::stream::iter(building.iter().map(|&model| {
                let reads = Reads::of(models, model, &versions, &rebuilt);
                let sources = Sources {
                    ctx: &ctx,
                    shared: &shared,
                    snapshots: &snapshots,
                };
                build_model(lake, models, model, reads, sources, options)
            }))
            .buffered(at_once(
                building.len(),
                source_bytes,
                small,
                options.threads,
            ))
            .try_collect()
            .await?;
        for (report, kept) in built {
            let model = models.get(&report.model).expect("a built model exists");
            match kept {
                Some(version) => {
                    versions.insert(model.relation(), (Layer::Gold, model.name.clone(), version));
                }
                None => {
                    rebuilt.insert(model.name.clone());
                }
            }
            reports.push(report);
        }
        done.extend(wave.iter().map(|m| m.name.as_str()));
    }
    spinner.finish_and_clear();
    // In the project's order, whatever wave built them.
    let position = |name: &str| needed.iter().position(|m| m.name == name);
    reports.sort_by_key(|r: &ModelReport| position(&r.model));
    Ok(reports)
}

/// Builds one stored model of a wave: kept when nothing it reads changed since it was built
/// (then its version is returned), else materialized; `options.built` hears of it either way.
async fn build_model(
    lake: &Lake,
    models: &Models,
    model: &Model,
    reads: Result<Option<Reads>>,
    sources: Sources<'_>,
    options: &BuildOptions,
) -> Result<(ModelReport, Option<i64>)> {
    let reads = reads?;
    let (since, appended) = match &reads {
        Some(reads) if !options.full_refresh => reads.since_built(lake, model).await?,
        _ => (Changes::Rewritten, Vec::new()),
    };
    let built = if since == Changes::None {
        keep(lake, sources.ctx, models, model).await?
    } else {
        // An incremental model recomputes its recent rows (the lookback) and merges them: that
        // covers rows added within its window, not rows an input updated or deleted, which may
        // belong to any older row of the model. Then (and under --full-refresh, which counts as
        // rewritten) it is built in full; so it is when an added row reaches a key outside the
        // window (see [`covers`]).
        let full = since == Changes::Rewritten;
        let added = Added {
            tables: &appended,
            keys: &options.keys,
        };
        let report = materialize(lake, models, model, full, reads.as_ref(), sources, added).await?;
        crate::fault::crash_point(&format!("gold-after:{}", model.name));
        (report, None)
    };
    if let Some(announce) = &options.built {
        // Nobody listening is no error: the build goes on.
        let _ = announce.send(model.name.clone());
    }
    Ok(built)
}

fn query_error(
    models: &Models,
    model: &Model,
    source: deltalake::datafusion::error::DataFusionError,
) -> Error {
    Error::Query {
        model: model.name.clone(),
        file: models.dir.join(&model.path).display().to_string(),
        source,
    }
}

/// `(model, source)` for each selected model that reads (directly or through the models it
/// refs) a source table not in the lake yet.
pub async fn missing_sources(
    lake: &Lake,
    models: &Models,
    selected: &BTreeSet<String>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // Each source is looked for once, however many models read it; the build brings its
    // snapshot up to date once it holds the gold lease.
    let mut exists: std::collections::BTreeMap<&(String, String), bool> = Default::default();
    for name in selected {
        for source in models.sources_read(name) {
            let (layer, table) = source;
            let found = match exists.get(source) {
                Some(found) => *found,
                None => {
                    let kind = if layer == "bronze" {
                        Layer::Bronze
                    } else {
                        Layer::Silver
                    };
                    let found = lake.exists(kind, table).await?;
                    exists.insert(source, found);
                    found
                }
            };
            if !found {
                out.push((name.clone(), format!("{layer}.{table}")));
                break;
            }
        }
    }
    Ok(out)
}

/// The tables a build registered, by relation (`silver.orders`, `gold.gold_daily_sales`): the
/// layer, the table and the version registered.
type Versions = BTreeMap<String, (Layer, String, i64)>;

/// The snapshots of the bronze and silver tables a build registered, by relation.
type Snapshots = BTreeMap<String, deltalake::DeltaTable>;

/// What a build registered, which each model of it reads.
#[derive(Clone, Copy)]
struct Sources<'a> {
    ctx: &'a SessionContext,
    shared: &'a Shared,
    snapshots: &'a Snapshots,
}

/// A table a model reads that only gained rows since the model's last build: its relation,
/// and the versions between which it did.
#[derive(Debug, Clone)]
struct Appended {
    relation: String,
    layer: Layer,
    table: String,
    since: i64,
    until: i64,
}

/// The tables whose added rows an incremental build checks against its window, and the keys
/// `pii_decrypt` needs to run the model over them.
#[derive(Clone, Copy)]
struct Added<'a> {
    tables: &'a [Appended],
    keys: &'a Arc<crate::pii::Keyring>,
}

/// Sources (the bronze and silver tables the models read) of at most this many bytes in all,
/// as stored, let a wave build all its models at once: their joins are small, and one model's
/// plan and commit overlap another's query. Larger ones are built [`BuildOptions::threads`] at
/// a time, each holding its joins in memory. On the sample lake (about 10 MB), a gateway
/// refresh of 10 orders answered `?wait=visible` in 191-205 ms at p50 with the five models at
/// once, against 210-218 ms two at a time (the two binaries alternated three times, 20
/// requests each); at scale 1 (about 50 MB of sources) the five took 0.28-0.30 s, against
/// 0.35 s two at a time.
const SMALL_SOURCES_BYTES: u64 = 64 << 20;

/// The variable that moves [`SMALL_SOURCES_BYTES`], in MiB.
const SMALL_SOURCES_VAR: &str = "FRAMEWORK_GOLD_SMALL_SOURCES_MB";

/// [`SMALL_SOURCES_BYTES`], or [`SMALL_SOURCES_VAR`] MiB when set (a machine with more cores
/// and memory may raise it; 0 builds any lake as large sources).
fn small_sources_bytes() -> Result<u64> {
    let Ok(text) = std::env::var(SMALL_SOURCES_VAR) else {
        return Ok(SMALL_SOURCES_BYTES);
    };
    let mb: u64 = text.trim().parse().map_err(|_| {
        Error::Setting(format!(
            "{SMALL_SOURCES_VAR}={text:?} is not a whole number of MiB\n  hint: unset it for \
             the default (64), or give e.g. 256 (0 builds every lake as large sources)"
        ))
    })?;
    Ok(mb.saturating_mul(1 << 20))
}

/// With large sources a wave builds few models at once, and a query often runs alone: the
/// shared ephemeral model that the others wait for, the last model of a wave. Such a build
/// splits each query over every core ([`every_core_per_query`]) where [`session`] gives it half
/// of them. At scale 10 (about 0.6 GB of sources) a gold build took 3.68-3.88 s against
/// 4.30-4.61 s on one partition a query (`build --full-refresh`, alternated twice, 2026-12-06
/// 23:35 UTC; peak 1.34 against 1.17-1.22 GiB); at scale 1, where the five models run at once,
/// it was slower (0.46-0.49 s against 0.37-0.42 s), so small sources keep half the cores.
/// Returns the partitions `ctx` now gives a query.
fn query_partitions_for(ctx: &SessionContext, large: bool) -> usize {
    if large {
        every_core_per_query(ctx);
    }
    ctx.state_ref().read().config().target_partitions()
}

/// How many of a wave's `models` are built at once, when the sources hold `source_bytes` and
/// sources of at most `small` bytes are small.
fn at_once(models: usize, source_bytes: u64, small: u64, threads: usize) -> usize {
    match source_bytes <= small {
        true => models.max(1),
        false => threads.max(1),
    }
}

/// Creates the schemas the models use and registers every source table they read; returns the
/// versions registered, and the bytes of their live files (see [`SMALL_SOURCES_BYTES`]).
async fn register_sources(
    lake: &Lake,
    ctx: &SessionContext,
    needed: &[&Model],
) -> Result<(Versions, Snapshots, u64)> {
    let sources: BTreeSet<&(String, String)> = needed.iter().flat_map(|m| &m.sources).collect();
    create_schemas(ctx, needed)?;
    let mut versions = Versions::new();
    let mut snapshots = Snapshots::new();
    let mut bytes = 0;
    for (layer, table) in sources {
        let kind = if layer == "bronze" {
            Layer::Bronze
        } else {
            Layer::Silver
        };
        let relation = format!("{layer}.{table}");
        let Some(delta) = lake.register_snapshot(ctx, kind, table, &relation).await? else {
            return Err(Error::MissingSource {
                layer: layer.clone(),
                table: table.clone(),
            });
        };
        bytes += delta.snapshot().map_or(0, |s| LiveFiles::of(s).bytes);
        let version = delta.version().unwrap_or(0) as i64;
        versions.insert(relation.clone(), (kind, table.clone(), version));
        snapshots.insert(relation, delta);
    }
    Ok((versions, snapshots, bytes))
}

/// Creates in `ctx` the schemas that the `needed` models and the sources they read live in.
fn create_schemas(ctx: &SessionContext, needed: &[&Model]) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    let mut schemas: BTreeSet<&str> = needed.iter().map(|m| m.folder.as_str()).collect();
    let sources = needed.iter().flat_map(|m| &m.sources);
    schemas.extend(sources.map(|(layer, _)| layer.as_str()));
    for schema in schemas {
        if catalog.schema(schema).is_none() {
            catalog
                .register_schema(schema, Arc::new(MemorySchemaProvider::new()))
                .map_err(|source| Error::Query {
                    model: String::new(),
                    file: String::new(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// What a stored model reads, recorded in each commit of the model as Delta `txn` actions: the
/// version of every table it reads (its sources and the stored models it refs, directly or
/// through views and ephemeral models) and a hash of its SQL. A model whose SQL is the same and
/// whose tables had no commit that changed data since (an unchanged re-delivery commits only
/// offsets) would compute the same rows: it is kept as it is.
struct Reads {
    /// `(layer, table, version)` per app id.
    tables: Vec<(String, Layer, String, i64)>,
    sql_hash: i64,
}

impl Reads {
    /// `None` when a stored model it reads was built again by this run.
    fn of(
        models: &Models,
        model: &Model,
        versions: &Versions,
        rebuilt: &BTreeSet<String>,
    ) -> Result<Option<Self>> {
        let ancestors = models.ancestors(&model.name);
        let rebuilt_here =
            |a: &&Model| a.config.materialized.is_stored() && rebuilt.contains(&a.name);
        if ancestors.iter().any(rebuilt_here) {
            return Ok(None);
        }
        let relations = tables_read(model, &ancestors);
        let mut tables = Vec::new();
        for relation in relations {
            let Some((layer, table, version)) = versions.get(&relation) else {
                return Ok(None);
            };
            tables.push((
                format!("{READ_APP}{relation}"),
                *layer,
                table.clone(),
                *version,
            ));
        }
        let sql = models.render(model, false).map_err(Error::Models)?;
        let hash = blake3::hash(sql.as_bytes());
        let sql_hash =
            i64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")) & i64::MAX;
        Ok(Some(Self { tables, sql_hash }))
    }

    /// The `txn` actions that record these reads.
    fn txns(&self) -> Vec<(String, i64)> {
        self.tables
            .iter()
            .map(|(app, _, _, version)| (app.clone(), *version))
            .chain(std::iter::once((SQL_APP.to_owned(), self.sql_hash)))
            .collect()
    }

    /// How `model`'s inputs changed since its table was last built: [`Changes::None`] when built
    /// from the same SQL and from versions of the same tables with no data change since
    /// ([`Changes::Rewritten`] when the SQL differs or the last build recorded no reads); with
    /// the tables that only gained rows, when none was rewritten.
    async fn since_built(&self, lake: &Lake, model: &Model) -> Result<(Changes, Vec<Appended>)> {
        let apps: Vec<String> = self.txns().into_iter().map(|(app, _)| app).collect();
        let built = lake.txn_versions(Layer::Gold, &model.name, &apps).await?;
        if built.get(SQL_APP) != Some(&self.sql_hash) {
            return Ok((Changes::Rewritten, Vec::new()));
        }
        let mut changes = Changes::None;
        let mut appended = Vec::new();
        for (app, layer, table, version) in &self.tables {
            let Some(&from) = built.get(app) else {
                return Ok((Changes::Rewritten, Vec::new()));
            };
            let table_changes = lake.changes(*layer, table, from, *version).await?;
            match table_changes {
                Changes::None => {}
                Changes::Appended => appended.push(Appended {
                    relation: app.trim_start_matches(READ_APP).to_owned(),
                    layer: *layer,
                    table: table.clone(),
                    since: from,
                    until: *version,
                }),
                Changes::Rewritten => return Ok((Changes::Rewritten, Vec::new())),
            }
            changes = changes.max(table_changes);
        }
        Ok((changes, appended))
    }
}

/// The relations of the tables `model` reads, given its `ancestors`: the sources it and they
/// read (`silver.orders`), and the stored models among them (`gold.gold_daily_sales`).
fn tables_read(model: &Model, ancestors: &[&Model]) -> BTreeSet<String> {
    let sources = ancestors
        .iter()
        .chain(std::iter::once(&model))
        .flat_map(|m| &m.sources)
        .map(|(layer, table)| format!("{layer}.{table}"));
    let stored = ancestors
        .iter()
        .filter(|a| a.config.materialized.is_stored())
        .map(|a| a.relation());
    sources.chain(stored).collect()
}

/// The prefix of the app ids under which a model's commit records the version of each table
/// it read (`framework-gold-read/silver.orders`).
const READ_APP: &str = "framework-gold-read/";

/// The app id under which a model's commit records the hash of its SQL.
const SQL_APP: &str = "framework-gold-sql";

/// Registers a model kept as it is; returns its report and the version registered.
async fn keep(
    lake: &Lake,
    ctx: &SessionContext,
    models: &Models,
    model: &Model,
) -> Result<(ModelReport, Option<i64>)> {
    let started = Instant::now();
    let relation = model.relation();
    let query = |source| query_error(models, model, source);
    let version = lake
        .register_version(ctx, Layer::Gold, &model.name, &relation)
        .await?
        .ok_or_else(|| Error::NotBuilt {
            model: model.name.clone(),
        })?;
    let rows = ctx
        .table(relation.as_str())
        .await
        .map_err(query)?
        .count()
        .await
        .map_err(query)? as u64;
    let report = ModelReport {
        model: model.name.clone(),
        materialized: model.config.materialized,
        incremental: false,
        unchanged: true,
        rows_computed: 0,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, Some(version)))
}

/// Most bytes an ephemeral model shared by several models of a build may hold in memory; a
/// larger one is inlined into each model that reads it, as usual. Holding one costs less memory
/// than recomputing it in each reader: at scale 10 the delivered items (252 MB, compacted) held
/// gave a gold build of 3.3 s and 1.23 GiB peak, inlined 4.6 s and 1.38 GiB.
const SHARED_LIMIT: usize = 512 * 1024 * 1024;

/// The ephemeral models (by name) that two or more stored models of this build read: each is
/// computed once, by the first model that needs it, and held in memory for the others. Its
/// cell says whether it was (`false`: over [`SHARED_LIMIT`], inlined as a CTE instead).
type Shared = BTreeMap<String, tokio::sync::OnceCell<bool>>;

fn shared_ephemerals(models: &Models, needed: &[&Model], selected: &BTreeSet<String>) -> Shared {
    let stored: Vec<&Model> = needed
        .iter()
        .copied()
        .filter(|m| selected.contains(&m.name))
        .filter(|m| m.config.materialized.is_stored())
        .collect();
    needed
        .iter()
        .filter(|e| e.config.materialized == Materialized::Ephemeral)
        .filter(|e| {
            let readers = stored
                .iter()
                .filter(|m| models.ancestors(&m.name).iter().any(|a| a.name == e.name));
            readers.count() >= 2
        })
        .map(|e| (e.name.clone(), tokio::sync::OnceCell::new()))
        .collect()
}

/// Computes a shared ephemeral model and registers its rows under its relation's name; `false`
/// when they are too large to hold (then each model inlines it).
async fn share(ctx: &SessionContext, models: &Models, model: &Model) -> Result<bool> {
    let started = Instant::now();
    let query = |source| query_error(models, model, source);
    let sql = models.render(model, false).map_err(Error::Models)?;
    let frame = ctx.sql(&sql).await.map_err(query)?;
    let batches = collect_apart(frame)
        .await
        .map_err(query)?
        .iter()
        .map(compacted)
        .collect::<Vec<_>>();
    // The batches' own schema (it may differ from the plan's in nullability).
    let schema = batches[0].schema();
    let bytes = held_bytes(&batches);
    let held = bytes <= SHARED_LIMIT;
    if held {
        let table = MemTable::try_new(schema, vec![batches]).map_err(query)?;
        ctx.register_table(model.relation().as_str(), Arc::new(table))
            .map_err(query)?;
    }
    tracing::debug!(
        model = model.name,
        bytes,
        held,
        seconds = started.elapsed().as_secs_f64(),
        "gold: shared ephemeral model computed once"
    );
    Ok(held)
}

/// `batch` with its string views copied out of the buffers they point into, which a join's
/// output shares with the whole of its inputs' pages: held for the build, it keeps only its own
/// strings.
fn compacted(batch: &RecordBatch) -> RecordBatch {
    let columns = batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::Utf8View => Arc::new(column.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(column.as_binary_view().gc()),
            _ => column.clone(),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).expect("the same columns, compacted")
}

/// The bytes `batches` keep allocated, each allocation counted once. A join's output batches
/// share the string buffers of its build side (views into them), so summing each batch's
/// [`RecordBatch::get_array_memory_size`] counted those buffers once per batch: 3.9 GB for the
/// 0.25 GB of delivered items at scale 10.
fn held_bytes(batches: &[RecordBatch]) -> usize {
    fn visit(data: &ArrayData, seen: &mut HashSet<usize>, bytes: &mut usize) {
        let nulls = data.nulls().map(|n| n.buffer());
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                *bytes += buffer.capacity().max(buffer.len());
            }
        }
        for child in data.child_data() {
            visit(child, seen, bytes);
        }
    }
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for column in batches.iter().flat_map(RecordBatch::columns) {
        visit(&column.to_data(), &mut seen, &mut bytes);
    }
    bytes
}

/// Runs one stored model and writes (or merges) its rows.
async fn materialize(
    lake: &Lake,
    models: &Models,
    model: &Model,
    full: bool,
    reads: Option<&Reads>,
    sources: Sources<'_>,
    added: Added<'_>,
) -> Result<ModelReport> {
    let started = Instant::now();
    let Sources { ctx, shared, .. } = sources;
    let txns = reads.map(Reads::txns).unwrap_or_default();
    let relation = model.relation();
    let query = |source| query_error(models, model, source);
    // Only an incremental run reads the model's own table (`this`): a table model, or any
    // model built in `full` (--full-refresh, or inputs rewritten), is replaced whole without
    // loading the old one.
    let existing = if model.config.materialized == Materialized::Incremental && !full {
        lake.open(Layer::Gold, &model.name).await?
    } else {
        None
    };
    let incremental = existing.is_some();
    if existing.is_some() {
        lake.register(ctx, Layer::Gold, &model.name, &relation)
            .await?;
    }
    // The shared ephemeral models it reads, computed once for the build.
    let mut registered = BTreeSet::new();
    for ancestor in models.ancestors(&model.name) {
        if let Some(cell) = shared.get(&ancestor.name)
            && *cell
                .get_or_try_init(|| share(ctx, models, ancestor))
                .await?
        {
            registered.insert(ancestor.name.clone());
        }
    }
    let sql = models
        .render_reading(model, incremental, &registered)
        .map_err(Error::Models)?;
    let frame = ctx.sql(&sql).await.map_err(query)?;
    let plan_s = started.elapsed().as_secs_f64();
    let batches = collect_apart(frame).await.map_err(query)?;
    if incremental && !covers(models, model, &batches, sources, added, lake).await? {
        tracing::debug!(
            model = model.name,
            "gold: rows were added outside the incremental window: built in full"
        );
        let full = Box::pin(materialize(
            lake, models, model, true, reads, sources, added,
        ));
        return full.await;
    }
    let query_s = started.elapsed().as_secs_f64();
    let schema = batches[0].schema();
    let rows_computed = batches.iter().map(|b| b.num_rows() as u64).sum();
    let rows = match existing {
        Some(target) if incremental => {
            if rows_computed > 0 {
                merge(ctx, target, batches, &model.config.unique_key, txns)
                    .await
                    .map_err(|source| Error::Delta {
                        model: model.name.clone(),
                        source,
                    })?;
            }
            // Later models read the merged table from the lake.
            ctx.deregister_table(relation.as_str()).map_err(query)?;
            lake.register(ctx, Layer::Gold, &model.name, &relation)
                .await?;
            ctx.table(relation.as_str())
                .await
                .map_err(query)?
                .count()
                .await
                .map_err(query)? as u64
        }
        _ => {
            lake.write(Layer::Gold, &model.name, batches.clone(), &[], txns, true)
                .await?;
            // Later models read what was just written, from memory.
            ctx.deregister_table(relation.as_str()).map_err(query)?;
            let table = MemTable::try_new(schema, vec![batches]).map_err(query)?;
            ctx.register_table(relation.as_str(), Arc::new(table))
                .map_err(query)?;
            rows_computed
        }
    };
    tracing::debug!(
        model = model.name,
        plan_s,
        query_s,
        write_s = started.elapsed().as_secs_f64() - query_s,
        rows,
        "gold: model built"
    );
    Ok(ModelReport {
        model: model.name.clone(),
        materialized: model.config.materialized,
        incremental,
        unchanged: false,
        rows_computed,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Whether `window`, the rows an incremental build of `model` computed, holds every unique key
/// that the rows added to its inputs since its last build reach. The window (the model's
/// `is_incremental()` filter: the last `lookback_days` dates) is merged on the unique key, and a
/// key outside it keeps its old row: an added row that reaches one (a late order of an older
/// date, a new item of an old order) would never show. So, for each input that gained rows, the
/// model runs over those rows alone, with its other inputs whole as this build registered them;
/// every key that returns must be in the window. This holds for a model whose rows are computed
/// per key from that key's rows (grouped by its unique key, over joins and filters), which an
/// incremental model's merge needs anyway. Through an outer join the added rows reach more keys
/// (the other side's unmatched rows), so such a model is built in full more often. A model whose
/// rows depend on other keys' rows (a total over all rows) is beyond this check: it must be a
/// table, not incremental (the README says so).
async fn covers(
    models: &Models,
    model: &Model,
    window: &[RecordBatch],
    sources: Sources<'_>,
    added: Added<'_>,
    lake: &Lake,
) -> Result<bool> {
    use deltalake::arrow::row::{RowConverter, SortField};
    let query = |source| query_error(models, model, source);
    let key: Vec<&str> = model.config.unique_key.iter().map(String::as_str).collect();
    let Some(schema) = window.first().map(RecordBatch::schema) else {
        return Ok(false);
    };
    let Ok(indices) = key
        .iter()
        .map(|k| schema.index_of(k))
        .collect::<std::result::Result<Vec<usize>, _>>()
    else {
        return Ok(false);
    };
    if key.is_empty() {
        return Ok(false);
    }
    let types: Vec<DataType> = indices
        .iter()
        .map(|&i| schema.field(i).data_type().clone())
        .collect();
    let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())
        .map_err(|e| query(e.into()))?;
    let key_rows = |batch: &RecordBatch, indices: &[usize]| {
        let columns: Vec<ArrayRef> = indices.iter().map(|&i| batch.column(i).clone()).collect();
        converter.convert_columns(&columns)
    };
    let mut in_window = HashSet::new();
    for batch in window {
        let rows = key_rows(batch, &indices).map_err(|e| query(e.into()))?;
        in_window.extend(rows.iter().map(|row| row.owned()));
    }
    let mut needed = models.ancestors(&model.name);
    let relations = tables_read(model, &needed);
    needed.push(model);
    for table in added.tables {
        // A stored model that gained rows (an incremental one merged alone) is not followed.
        let Some(delta) = sources.snapshots.get(&table.relation) else {
            return Ok(false);
        };
        let since = (table.layer, table.table.as_str(), table.since, table.until);
        let Some(paths) = lake.added_since(since.0, since.1, since.2, since.3).await? else {
            return Ok(false);
        };
        if paths.is_empty() {
            continue;
        }
        let pass = session();
        crate::pii::udf::register(&pass, added.keys);
        create_schemas(&pass, &needed)?;
        for relation in &relations {
            if *relation == table.relation {
                let (layer, name) = (table.layer, table.table.as_str());
                Lake::register_files(&pass, layer, name, relation, delta, Some(&paths), None)
                    .await?;
            } else {
                let provider = sources.ctx.table_provider(relation.as_str());
                let provider = provider.await.map_err(query)?;
                pass.register_table(relation.as_str(), provider)
                    .map_err(query)?;
            }
        }
        for view in needed
            .iter()
            .filter(|m| m.config.materialized == Materialized::View && m.name != model.name)
        {
            let sql = models.render(view, false).map_err(Error::Models)?;
            pass.sql(&format!("CREATE VIEW {} AS {sql}", view.relation()))
                .await
                .map_err(query)?;
        }
        let sql = models.render(model, false).map_err(Error::Models)?;
        let frame = pass.sql(&sql).await.map_err(query)?;
        let plan = frame.clone().into_optimized_plan().map_err(query)?;
        if !per_key(&plan, &table.relation) {
            return Ok(false);
        }
        let reached = frame
            .select_columns(&key)
            .and_then(|f| f.distinct())
            .map_err(query)?
            .collect()
            .await
            .map_err(query)?;
        for batch in reached {
            let same_types =
                (0..key.len()).all(|i| batch.schema().field(i).data_type() == &types[i]);
            if !same_types {
                return Ok(false);
            }
            let all: Vec<usize> = (0..key.len()).collect();
            let rows = key_rows(&batch, &all).map_err(|e| query(e.into()))?;
            if !rows.iter().all(|row| in_window.contains(&row.owned())) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether `plan` (a model's query, optimized: views inlined) gives each added row of
/// `relation` its key on its own, so that running it over the added rows alone finds every key
/// they reach. Not when a row needs other rows of its table or group to show (or to vanish):
/// a window function (the latest row per key), a filter over groups (`HAVING`), a limit,
/// `DISTINCT ON`, a subquery, an outer or anti join, a join over an aggregate (a total over
/// all rows), or `relation` read twice (a self-join). Such a model is built in full whenever an
/// input gained rows.
fn per_key(plan: &deltalake::datafusion::logical_expr::LogicalPlan, relation: &str) -> bool {
    use deltalake::datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use deltalake::datafusion::logical_expr::{Distinct, JoinType, LogicalPlan};
    let grouped = |plan: &LogicalPlan| {
        plan.exists(|n| {
            Ok(matches!(
                n,
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_)
            ))
        })
        .unwrap_or(true)
    };
    let mut scans = 0;
    let mut local = true;
    let walked = plan.apply_with_subqueries(|node| {
        let breaks = match node {
            LogicalPlan::Window(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::Distinct(Distinct::On(_)) => true,
            LogicalPlan::Filter(filter) => grouped(&filter.input),
            // A limit the optimizer folded into a sort or a scan.
            LogicalPlan::Sort(sort) => sort.fetch.is_some(),
            LogicalPlan::Join(join) => {
                !matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
                ) || grouped(&join.left)
                    || grouped(&join.right)
            }
            LogicalPlan::TableScan(scan) => {
                scans += usize::from(scan.table_name.to_string() == relation);
                scans > 1 || scan.fetch.is_some()
            }
            _ => false,
        };
        local &= !breaks;
        Ok(match breaks {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    walked.is_ok() && local && scans == 1
}

/// Upserts `batches` into `target` on `key`: matched rows are replaced, new keys inserted.
async fn merge(
    ctx: &SessionContext,
    target: deltalake::DeltaTable,
    batches: Vec<RecordBatch>,
    key: &[String],
    txns: Vec<(String, i64)>,
) -> Result<(), deltalake::DeltaTableError> {
    let commit = deltalake::kernel::transaction::CommitProperties::default()
        .with_application_transactions(
            txns.into_iter()
                .map(|(app, version)| deltalake::kernel::Transaction::new(app, version))
                .collect(),
        );
    let properties = crate::lake::writer_properties(&batches);
    let source = ctx.read_batches(batches)?;
    let columns: Vec<String> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let on = key_match(key, "target", "source");
    target
        .merge(source, on.as_str())
        .with_source_alias("source")
        .with_target_alias("target")
        .with_session_state(Arc::new(ctx.state()))
        .with_commit_properties(commit)
        .with_writer_properties(properties)
        .when_matched_update(|update| {
            columns.iter().fold(update, |u, c| {
                u.update(c.as_str(), format!("source.{}", ident(c)))
            })
        })?
        .when_not_matched_insert(|insert| {
            columns.iter().fold(insert, |i, c| {
                i.set(c.as_str(), format!("source.{}", ident(c)))
            })
        })?
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::StringViewArray;
    use deltalake::arrow::datatypes::{Field, Schema};

    use super::*;

    /// Two halves of one array of long strings (longer than a view's 12 inline bytes).
    fn halves() -> (RecordBatch, RecordBatch) {
        let values: Vec<String> = (0..1000).map(|i| format!("{i:032}")).collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "id",
            DataType::Utf8View,
            false,
        )]));
        let whole = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringViewArray::from_iter_values(&values))],
        )
        .unwrap();
        (whole.slice(0, 500), whole.slice(500, 500))
    }

    /// A grouped join gives each added row its key alone; a filter over groups, the latest row
    /// per key, a self-join, an outer join and a total over all rows do not.
    #[tokio::test]
    async fn only_a_query_that_keys_each_row_alone_passes_the_late_row_check() {
        use deltalake::arrow::array::Int64Array;
        let ctx = SessionContext::new();
        let catalog = ctx.catalog("datafusion").unwrap();
        catalog
            .register_schema("silver", Arc::new(MemorySchemaProvider::new()))
            .unwrap();
        let schema = Arc::new(Schema::new(
            ["k", "d", "v"]
                .map(|name| Field::new(name, DataType::Int64, false))
                .to_vec(),
        ));
        let column = || Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef;
        let batch = RecordBatch::try_new(schema.clone(), vec![column(), column(), column()]);
        let table = MemTable::try_new(schema, vec![vec![batch.unwrap()]]).unwrap();
        let table = Arc::new(table);
        ctx.register_table("silver.t", table.clone()).unwrap();
        ctx.register_table("silver.u", table).unwrap();
        let cases = [
            (
                "SELECT d, sum(v), count(DISTINCT k) FROM silver.t GROUP BY d",
                true,
            ),
            (
                "SELECT t.d, sum(u.v) FROM silver.t t JOIN silver.u u ON u.k = t.k \
                 WHERE t.v > 0 GROUP BY t.d",
                true,
            ),
            (
                "SELECT d, count(*) FROM silver.t GROUP BY d HAVING count(*) >= 2",
                false,
            ),
            (
                "SELECT d FROM (SELECT d, row_number() OVER (PARTITION BY k ORDER BY v DESC) \
                 AS r FROM silver.t) WHERE r = 1",
                false,
            ),
            (
                "SELECT a.d, count(*) FROM silver.t a JOIN silver.t b ON a.k = b.k \
                 AND a.v < b.v GROUP BY a.d",
                false,
            ),
            (
                "SELECT t.d, count(u.k) FROM silver.t t LEFT JOIN silver.u u ON u.k = t.k \
                 GROUP BY t.d",
                false,
            ),
            (
                "SELECT t.d, m.top - t.v FROM silver.t t CROSS JOIN \
                 (SELECT max(v) AS top FROM silver.u) m",
                false,
            ),
            ("SELECT d FROM silver.t ORDER BY v LIMIT 10", false),
            ("SELECT d FROM silver.t LIMIT 10", false),
        ];
        for (sql, expected) in cases {
            let frame = ctx.sql(sql).await.unwrap();
            let plan = frame.into_optimized_plan().unwrap();
            assert_eq!(per_key(&plan, "silver.t"), expected, "{sql}\n{plan}");
        }
    }

    /// Small sources build a wave whole; from one byte over the limit, `threads` at a time.
    #[test]
    fn a_wave_is_built_whole_only_over_small_sources() {
        let small = SMALL_SOURCES_BYTES;
        assert_eq!(at_once(5, 10 << 20, small, 2), 5);
        assert_eq!(at_once(5, small, small, 2), 5);
        assert_eq!(at_once(5, small + 1, small, 2), 2);
        assert_eq!(at_once(0, 0, small, 2), 1);
        assert_eq!(at_once(3, u64::MAX, small, 0), 1);
        assert_eq!(at_once(5, 1, 0, 2), 2);
    }

    #[test]
    fn buffers_shared_by_batches_are_counted_once() {
        let (first, second) = halves();
        let one = held_bytes(std::slice::from_ref(&first));
        assert!(one >= 1000 * 32, "the whole string buffer: {one}");
        assert_eq!(held_bytes(&[first, second]), one);
    }

    #[test]
    fn a_compacted_batch_holds_only_its_own_strings() {
        let (first, _) = halves();
        let compacted = compacted(&first);
        assert_eq!(
            compacted.column(0).as_string_view().value(499),
            format!("{:032}", 499)
        );
        let (shared, own) = (held_bytes(&[first]), held_bytes(&[compacted]));
        assert!(
            own < shared * 3 / 4,
            "compacted {own} bytes, shared {shared}"
        );
    }
}
