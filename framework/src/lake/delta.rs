use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};

use super::{Error, Result};
use crate::lease::{self, Lease};
use crate::offsets::Ends;

/// A layer of the lake; each is a folder of Delta tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Bronze,
    Reject,
    Silver,
    Quarantine,
    Gold,
    Quality,
    /// The lake's own bookkeeping (`_meta/deliveries`: which source files were ingested).
    Meta,
}

impl Layer {
    pub const fn dir(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Reject => "reject",
            Self::Silver => "silver",
            Self::Quarantine => "quarantine",
            Self::Gold => "gold",
            Self::Quality => "quality",
            Self::Meta => "_meta",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// Transaction versions by application id, as read from a table's log.
pub type TxnVersions = HashMap<String, i64>;

/// A DataFusion session with delta-rs' settings, each query on half the cores
/// ([`query_partitions`]).
pub fn session() -> SessionContext {
    use deltalake::datafusion::execution::SessionStateBuilder;
    let state = deltalake::delta_datafusion::DeltaSessionContext::new()
        .into_inner()
        .state();
    let config = state
        .config()
        .clone()
        .with_target_partitions(query_partitions());
    SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .build(),
    )
}

/// How many partitions a query is split into: half the cores, at least one. A run keeps two
/// queries going at once (two tables' silver, two gold models, checks beside them), so a query
/// split over every core only adds repartitioning: on the 2-core machine, one partition took
/// the 1% delivery at scale 1 from 1.17-1.26 to 1.04-1.16 s (four alternations, 2026-12-05
/// 09:35, 10% less CPU), with the first delivery (2.99-3.26 vs 3.01-3.11 s) and scale 10
/// (33.9-34.2 vs 32.9-34.1 s, peak 1.72-1.86 vs 1.67-1.72 GiB) unchanged.
fn query_partitions() -> usize {
    (cores() / 2).max(1)
}

/// The cores this process may use, at least one.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Splits each of `ctx`'s queries over every core instead of [`query_partitions`], for work
/// that often runs one query alone (a gold build over large sources, see
/// `gold::build::SMALL_SOURCES_BYTES`).
pub fn every_core_per_query(ctx: &SessionContext) {
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .target_partitions = cores();
}

/// The rows of `frame`, as at least one batch: a result without rows is one empty batch of the
/// frame's schema, so that it can still be written (a commit that records only offsets) or
/// registered as a table.
pub async fn collect_batches(
    frame: deltalake::datafusion::prelude::DataFrame,
) -> deltalake::datafusion::error::Result<Vec<RecordBatch>> {
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let mut batches = frame.collect().await?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// The rows of `frame` ([`collect_batches`]), computed on a task of their own. A query of one
/// partition (see [`session`]) runs in the task that polls it, so queries driven together by
/// one task (`buffered`: the stored models of a gold wave, a table's quality checks) took turns
/// on one thread; on a task each they use both cores. Dropping the future stops the query.
pub async fn collect_apart(
    frame: deltalake::datafusion::prelude::DataFrame,
) -> deltalake::datafusion::error::Result<Vec<RecordBatch>> {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = tokio::spawn(collect_batches(frame));
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(batches) => batches,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(deltalake::datafusion::error::DataFusionError::External(
            Box::new(join),
        )),
    }
}

/// Whether a local Delta log folder holds a commit (`<version>.json`) or a checkpoint. A folder
/// without one is a table never written: a process killed between creating the folder and
/// renaming its first commit into place leaves one behind (delta-rs then reports "No files in
/// log segment" instead of an empty table).
fn has_commit(log: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(log) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let version = name.split('.').next().unwrap_or("");
        !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && (name.ends_with(".json") || name.contains(".checkpoint"))
    })
}

/// Where the lake lives.
#[derive(Debug, Clone)]
enum Root {
    /// A local folder.
    Local(PathBuf),
    /// An object-store prefix (`s3://bucket/prefix`), with the store's settings.
    Remote {
        url: String,
        options: HashMap<String, String>,
    },
}

/// The lake: a local folder, or a prefix in an S3-compatible object store.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Root,
    /// The latest snapshot each table was opened at, shared by the clones of this `Lake`: the
    /// next open reads only the commits after it (see [`Lake::open`]).
    snapshots: std::sync::Arc<std::sync::Mutex<HashMap<(Layer, String), DeltaTable>>>,
    /// Per table name, columns left out of the Delta statistics of the tables it creates (they
    /// hold ciphertext: min and max of it serve no query); see [`Lake::without_stats_on`].
    stats_off: std::sync::Arc<HashMap<String, Vec<String>>>,
}

impl Lake {
    /// This lake, creating each table named in `columns` with the property
    /// `delta.dataSkippingStatsColumns` set to its other columns, so the Delta log keeps no
    /// statistics of those (a table that exists keeps its properties).
    #[must_use]
    pub fn without_stats_on(mut self, columns: HashMap<String, Vec<String>>) -> Self {
        self.stats_off = std::sync::Arc::new(columns);
        self
    }

    /// The `delta.dataSkippingStatsColumns` of a new `table` whose rows look like `batch`
    /// (partition columns are not in the files: they have no statistics to keep).
    fn stats_columns(
        &self,
        table: &str,
        batch: Option<&RecordBatch>,
        partition_by: &[&str],
    ) -> Option<String> {
        let off = self.stats_off.get(table)?;
        let schema = batch?.schema();
        let on: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| !off.iter().any(|o| o == name) && !partition_by.contains(name))
            .collect();
        Some(on.join(","))
    }

    /// The lake in a local folder.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Root::Local(root.into()),
            snapshots: Default::default(),
            stats_off: Default::default(),
        }
    }

    /// The lake at `location`: `s3://bucket/prefix` puts the tables in an S3-compatible object
    /// store whose settings come from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`,
    /// `AWS_CONDITIONAL_PUT`, ...: every `AWS_*` variable is passed on); anything else is a
    /// local folder.
    pub fn at(location: &str) -> Self {
        if !location.starts_with("s3://") && !location.starts_with("s3a://") {
            return Self::new(location);
        }
        static HANDLERS: std::sync::Once = std::sync::Once::new();
        HANDLERS.call_once(|| deltalake::aws::register_handlers(None));
        let options = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .collect();
        Self {
            root: Root::Remote {
                url: location.trim_end_matches('/').to_owned(),
                options,
            },
            snapshots: Default::default(),
            stats_off: Default::default(),
        }
    }

    /// The local folder of the lake, if it is local.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.root {
            Root::Local(path) => Some(path),
            Root::Remote { .. } => None,
        }
    }

    /// Folder of the embedded topic log (a local lake only: the log is a set of local files).
    pub fn bus_dir(&self) -> Option<PathBuf> {
        self.local_root().map(|root| root.join("_bus"))
    }

    /// Folder of a table of a local lake (panics on an object-store lake: see [`Self::location`]).
    pub fn table_path(&self, layer: Layer, table: &str) -> PathBuf {
        self.local_root()
            .expect("table_path is for local lakes")
            .join(layer.dir())
            .join(table)
    }

    /// Where a table lives, for people: a folder or a URL.
    pub fn location(&self, layer: Layer, table: &str) -> String {
        match &self.root {
            Root::Local(root) => root.join(layer.dir()).join(table).display().to_string(),
            Root::Remote { url, .. } => format!("{url}/{}/{table}", layer.dir()),
        }
    }

    fn delta_err(layer: Layer, table: &str) -> impl FnOnce(DeltaTableError) -> Error + '_ {
        move |source| Error::Delta {
            layer,
            table: table.to_owned(),
            source: Box::new(source),
        }
    }

    /// A builder for the table with the store's settings.
    fn builder(&self, layer: Layer, table: &str) -> Result<deltalake::DeltaTableBuilder> {
        let err = Self::delta_err(layer, table);
        match &self.root {
            Root::Local(_) => {
                let uri = deltalake::ensure_table_uri(self.location(layer, table)).map_err(err)?;
                deltalake::DeltaTableBuilder::from_url(uri).map_err(Self::delta_err(layer, table))
            }
            Root::Remote { options, .. } => {
                let url = url::Url::parse(&format!("{}/", self.location(layer, table)))
                    .map_err(|e| err(DeltaTableError::Generic(format!("bad lake URL: {e}"))))?;
                Ok(deltalake::DeltaTableBuilder::from_url(url)
                    .map_err(Self::delta_err(layer, table))?
                    .with_storage_options(options.clone()))
            }
        }
    }

    /// The table at its latest version, or `None` when nothing was ever written there.
    ///
    /// A table opened or written before by this `Lake` (or a clone) is brought forward from
    /// that snapshot (a write keeps the snapshot its commit produced):
    /// only the log's newer commits are listed and read, and only their file actions applied
    /// (delta-rs' incremental update), instead of reading the checkpoint and replaying the log.
    /// A snapshot that cannot be brought forward is dropped and the table loaded afresh.
    pub async fn open(&self, layer: Layer, table: &str) -> Result<Option<DeltaTable>> {
        if let Root::Local(_) = self.root
            && !has_commit(&self.table_path(layer, table).join("_delta_log"))
        {
            self.forget(layer, table);
            return Ok(None);
        }
        let key = (layer, table.to_owned());
        let cached = self
            .snapshots
            .lock()
            .expect("the snapshot cache is never poisoned")
            .get(&key)
            .cloned();
        if let Some(mut delta) = cached {
            if delta.update_incremental(None).await.is_ok() {
                self.remember(key, &delta);
                return Ok(Some(delta));
            }
            self.forget(layer, table);
        }
        match self.builder(layer, table)?.load().await {
            Ok(delta) if delta.version().is_some() => {
                self.remember(key, &delta);
                Ok(Some(delta))
            }
            Ok(_) => Ok(None),
            // On an object store, a table that was never written has no log to find.
            Err(DeltaTableError::NotATable(_)) if matches!(self.root, Root::Remote { .. }) => {
                Ok(None)
            }
            Err(e) => Err(Self::delta_err(layer, table)(e)),
        }
    }

    /// Whether the table has a commit, without bringing its snapshot up to date (a table is
    /// never deleted, so one seen once, or cached, exists).
    pub async fn exists(&self, layer: Layer, table: &str) -> Result<bool> {
        if let Root::Local(_) = self.root {
            return Ok(has_commit(
                &self.table_path(layer, table).join("_delta_log"),
            ));
        }
        let key = (layer, table.to_owned());
        let cached = self
            .snapshots
            .lock()
            .expect("the snapshot cache is never poisoned")
            .contains_key(&key);
        Ok(cached || self.open(layer, table).await?.is_some())
    }

    fn remember(&self, key: (Layer, String), delta: &DeltaTable) {
        let mut snapshots = self
            .snapshots
            .lock()
            .expect("the snapshot cache is never poisoned");
        // A newer snapshot stored meanwhile by another task stays.
        let newer = snapshots
            .get(&key)
            .is_some_and(|kept| kept.version() > delta.version());
        if !newer {
            snapshots.insert(key, delta.clone());
        }
    }

    fn forget(&self, layer: Layer, table: &str) {
        self.snapshots
            .lock()
            .expect("the snapshot cache is never poisoned")
            .remove(&(layer, table.to_owned()));
    }

    /// The table's latest version, `None` when nothing was ever written there.
    pub async fn version(&self, layer: Layer, table: &str) -> Result<Option<i64>> {
        Ok(self
            .open(layer, table)
            .await?
            .and_then(|delta| delta.version())
            .map(|v| v as i64))
    }

    /// Rewrites the table's small files into larger ones (Delta OPTIMIZE, a commit that
    /// changes no data) when it has more than `max_files` live files; returns the files
    /// removed. Many small commits (the gateway's) leave many small files, and every read and
    /// MERGE opens each one. Takes the table's lease.
    pub async fn compact(&self, layer: Layer, table: &str, max_files: usize) -> Result<u64> {
        let _lease = self.lease(layer, table).await?;
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(0);
        };
        let files = delta
            .snapshot()
            .map_err(Self::delta_err(layer, table))?
            .log_data()
            .num_files();
        if files <= max_files {
            return Ok(0);
        }
        let (compacted, metrics) = delta
            .optimize()
            // No rows to sample: the compacted files compress every column.
            .with_writer_properties(writer_properties(&[]))
            .await
            .map_err(Self::delta_err(layer, table))?;
        self.remember((layer, table.to_owned()), &compacted);
        Ok(metrics.num_files_removed)
    }

    /// Deletes the files that commits removed from the table (a MERGE's rewritten files, an
    /// overwrite's old ones, a compaction's small ones) at least `retention` ago: Delta VACUUM,
    /// which records itself in two commits that change no data. Files a reader of a version
    /// newer than `retention` needs stay. Returns the files deleted; when the removed files
    /// old enough are already gone (deleted by an earlier vacuum whose tombstones the log
    /// still holds), deletes nothing and commits nothing. Takes the table's lease.
    pub async fn vacuum(
        &self,
        layer: Layer,
        table: &str,
        retention: std::time::Duration,
    ) -> Result<usize> {
        let _lease = self.lease(layer, table).await?;
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(0);
        };
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let vacuum = |delta: DeltaTable, dry_run: bool| {
            delta
                .vacuum()
                .with_retention_period(retention)
                // The retention is the caller's choice (the gateway's `--vacuum-retention-s`),
                // not the table property's week.
                .with_enforce_retention_duration(false)
                .with_dry_run(dry_run)
        };
        let (delta, planned) = vacuum(delta, true)
            .await
            .map_err(Self::delta_err(layer, table))?;
        let mut present = false;
        for file in &planned.files_deleted {
            if file_exists(&delta, file)
                .await
                .map_err(|e| Self::delta_err(layer, table)(e.into()))?
            {
                present = true;
                break;
            }
        }
        if !present {
            return Ok(0);
        }
        let (delta, done) = vacuum(delta, false)
            .await
            .map_err(Self::delta_err(layer, table))?;
        self.remember((layer, table.to_owned()), &delta);
        Ok(done.files_deleted.len())
    }

    /// A handle for writing, whether or not the table exists yet.
    async fn handle(&self, layer: Layer, table: &str) -> Result<DeltaTable> {
        if let Root::Local(_) = self.root {
            let path = self.table_path(layer, table);
            std::fs::create_dir_all(&path).map_err(|e| Error::Delta {
                layer,
                table: table.to_owned(),
                source: Box::new(DeltaTableError::Generic(format!(
                    "cannot create {}: {e}",
                    path.display()
                ))),
            })?;
        }
        if let Some(delta) = self.open(layer, table).await? {
            return Ok(delta);
        }
        // A new table: no log to load yet (loading would only log a spurious kernel error).
        self.builder(layer, table)?
            .build()
            .map_err(Self::delta_err(layer, table))
    }

    /// The lease for writing `table` of `layer` (see [`crate::lease`]): a lock file under
    /// `<lake>/_leases/` on a local lake; nothing on an object store, where a concurrent commit
    /// conflicts and is retried or fails instead.
    pub async fn lease(&self, layer: Layer, table: &str) -> Result<Lease> {
        let Root::Local(root) = &self.root else {
            return Ok(Lease::none());
        };
        let path = root
            .join("_leases")
            .join(layer.dir())
            .join(format!("{table}.lock"));
        lease::take_async(&path, lease::timeout())
            .await
            .map_err(|source| Error::Lease {
                layer,
                table: table.to_owned(),
                source,
            })
    }

    /// Latest transaction version of each of `app_ids` in the snapshot `delta` of `table`
    /// (absent ids are left out).
    pub async fn txn_versions_in(
        delta: &DeltaTable,
        layer: Layer,
        table: &str,
        app_ids: &[String],
    ) -> Result<TxnVersions> {
        versions_in(delta, app_ids.iter())
            .await
            .map_err(Self::delta_err(layer, table))
    }

    /// Latest transaction version of each of `app_ids` in the table (absent ids are left out).
    pub async fn txn_versions(
        &self,
        layer: Layer,
        table: &str,
        app_ids: &[String],
    ) -> Result<TxnVersions> {
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(TxnVersions::new());
        };
        Self::txn_versions_in(&delta, layer, table, app_ids).await
    }

    /// Appends (or, with `overwrite`, replaces) rows and records `txns` in the same commit.
    pub async fn write(
        &self,
        layer: Layer,
        table: &str,
        batches: Vec<RecordBatch>,
        partition_by: &[&str],
        txns: Vec<(String, i64)>,
        overwrite: bool,
    ) -> Result<()> {
        let placement = Placement {
            partition_by,
            target_bytes: None,
        };
        self.write_placed(layer, table, batches, txns, overwrite, placement)
            .await
    }

    /// Appends (or, with `overwrite`, replaces) rows like [`Lake::write`], in files of about
    /// [`FILE_ROWS`] rows each in the order of `batches` (see [`FILE_ROWS`]).
    pub async fn write_in_files(
        &self,
        layer: Layer,
        table: &str,
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
        overwrite: bool,
    ) -> Result<()> {
        let placement = Placement {
            partition_by: &[],
            target_bytes: file_bytes(&batches),
        };
        self.write_placed(layer, table, batches, txns, overwrite, placement)
            .await
    }

    async fn write_placed(
        &self,
        layer: Layer,
        table: &str,
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
        overwrite: bool,
        placement: Placement<'_>,
    ) -> Result<()> {
        let delta = self.handle(layer, table).await?;
        let files = Files {
            stats_columns: self.stats_columns(table, batches.first(), placement.partition_by),
            target_bytes: placement.target_bytes,
        };
        let written = commit(
            delta,
            batches,
            placement.partition_by,
            txns,
            overwrite,
            Retry::ByDelta,
            files,
        )
        .await
        .map_err(Self::delta_err(layer, table))?;
        self.remember((layer, table.to_owned()), &written);
        Ok(())
    }

    /// Replaces the live files `removed` (their paths as the log holds them) of the snapshot
    /// `delta` by `batches`, written in files of about [`FILE_ROWS`] rows, and records `txns`,
    /// in one commit based on that snapshot. The commit counts as a MERGE that read the whole
    /// table: a commit that lands first (adding or removing files) makes it fail, never apply
    /// over rows it did not see. Local lakes take the table's lease first, so none does.
    pub async fn replace_files(
        &self,
        layer: Layer,
        table: &str,
        delta: &DeltaTable,
        removed: &[String],
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
    ) -> Result<()> {
        let replaced = replace(delta, table, removed, batches, txns)
            .await
            .map_err(Self::delta_err(layer, table))?;
        self.remember((layer, table.to_owned()), &replaced);
        Ok(())
    }

    /// Appends the rows of `batch` that are at or past the offsets the table records for their
    /// partitions, and records `ends` in the same commit (see [`crate::offsets`]).
    ///
    /// The offsets are read from the snapshot the commit is based on, so a concurrent commit for
    /// the same partitions (another consumer that held them before a rebalance) makes this commit
    /// conflict instead of writing rows twice; it is then retried on the newer snapshot.
    /// Returns how many rows were appended.
    pub async fn append_past(
        &self,
        layer: Layer,
        table: &str,
        batch: &RecordBatch,
        partition_by: &[&str],
        ends: &Ends,
    ) -> Result<usize> {
        let err = || Self::delta_err(layer, table);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let opening = std::time::Instant::now();
            let delta = self.handle(layer, table).await?;
            let open_s = opening.elapsed().as_secs_f64();
            let versions = if delta.version().is_some() {
                versions_in(&delta, ends.app_ids().iter())
                    .await
                    .map_err(err())?
            } else {
                TxnVersions::new()
            };
            let recorded = ends.recorded(&versions);
            let txns = ends.txns(&recorded);
            if txns.is_empty() {
                return Ok(0);
            }
            let fresh = recorded.rows_past(batch).map_err(|e| err()(e.into()))?;
            let rows = fresh.num_rows();
            let versions_s = opening.elapsed().as_secs_f64() - open_s;
            let files = Files {
                stats_columns: self.stats_columns(table, Some(&fresh), partition_by),
                target_bytes: None,
            };
            match commit(
                delta,
                vec![fresh],
                partition_by,
                txns,
                false,
                Retry::Ours,
                files,
            )
            .await
            {
                Ok(written) => {
                    self.remember((layer, table.to_owned()), &written);
                    tracing::debug!(
                        %layer,
                        table,
                        rows,
                        open_s,
                        versions_s,
                        commit_s = opening.elapsed().as_secs_f64() - open_s - versions_s,
                        "lake: appended"
                    );
                    return Ok(rows);
                }
                Err(e) if attempt < 50 && is_concurrent(&e) => {
                    tracing::info!(%layer, table, attempt, "another writer committed first; retrying on its snapshot");
                    // Spread the retries of writers that keep colliding.
                    let pause = 5 * attempt + u64::from(rand::random::<u8>() % 20);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(err()(e)),
            }
        }
    }

    /// Registers the table under `name` in `ctx`; false when the table does not exist.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
    ) -> Result<bool> {
        Ok(self
            .register_version(ctx, layer, table, name)
            .await?
            .is_some())
    }

    /// Registers the table under `name` in `ctx` and returns the snapshot registered (`None`
    /// when the table does not exist), for what else a caller reads of that same version.
    pub async fn register_snapshot(
        &self,
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
    ) -> Result<Option<DeltaTable>> {
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(None);
        };
        Self::register_files(ctx, layer, table, name, &delta, None, None).await?;
        Ok(Some(delta))
    }

    /// Registers the table under `name` in `ctx` and returns the version registered (`None`
    /// when the table does not exist).
    pub async fn register_version(
        &self,
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
    ) -> Result<Option<i64>> {
        let registered = self.register_snapshot(ctx, layer, table, name).await?;
        Ok(registered.map(|delta| delta.version().unwrap_or(0) as i64))
    }

    /// Registers the table under `name` in `ctx` and returns what its files' statistics count
    /// in the snapshot registered (`None` when the table does not exist; counts `None` when the
    /// statistics do not give them).
    pub async fn register_counted(
        &self,
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
        columns: &[&str],
    ) -> Result<Option<Option<NullCounts>>> {
        let registered = self.register_snapshot(ctx, layer, table, name).await?;
        Ok(registered.map(|delta| {
            let snapshot = delta.snapshot().ok()?;
            NullCounts::of(snapshot, columns.iter().copied())
        }))
    }

    /// Registers the snapshot `delta` of `table` under `name` in `ctx`, restricted to the live
    /// files `paths` (as the log holds them) when given, and with each row's file in a column
    /// `file_column` when given (as the scan reports it: see [`file_of`]).
    pub async fn register_files(
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
        delta: &DeltaTable,
        paths: Option<&[String]>,
        file_column: Option<&str>,
    ) -> Result<()> {
        let query = |source| Error::Query {
            layer,
            table: table.to_owned(),
            source: Box::new(source),
        };
        delta
            .update_datafusion_session(&ctx.state())
            .map_err(Self::delta_err(layer, table))?;
        let mut provider = delta.table_provider();
        if let Some(paths) = paths {
            provider = provider.with_file_paths(paths.iter().cloned());
        }
        if let Some(column) = file_column {
            provider = provider.with_file_column(column);
        }
        ctx.register_table(name, provider.await.map_err(query)?)
            .map_err(query)?;
        Ok(())
    }

    /// The live files of the snapshot `delta`: each one's path as the log holds it, and its rows
    /// when its statistics give them.
    pub fn live_files(delta: &DeltaTable) -> Vec<(String, Option<usize>)> {
        delta.snapshot().map_or_else(
            |_| Vec::new(),
            |snapshot| {
                snapshot
                    .log_data()
                    .iter()
                    .map(|file| (file.path().into_owned(), file.num_records()))
                    .collect()
            },
        )
    }

    /// Registers the table as of `version` (the latest when `None`) under `name` in `ctx` and
    /// returns the version registered (`None` when the table does not exist).
    pub async fn register_as_of(
        &self,
        ctx: &SessionContext,
        layer: Layer,
        table: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<i64>> {
        let Some(version) = version else {
            return self.register_version(ctx, layer, table, name).await;
        };
        let Some(latest) = self.open(layer, table).await? else {
            return Ok(None);
        };
        // Checked first: the log is searched version by version up to the one asked for, so a
        // version far past the latest would take minutes to be refused.
        if version < 0
            || latest
                .version()
                .is_none_or(|newest| version as u64 > newest)
        {
            return Err(Self::delta_err(layer, table)(
                DeltaTableError::InvalidVersion(version.max(0) as u64),
            ));
        }
        let delta = self
            .builder(layer, table)?
            .with_version(version as u64)
            .load()
            .await
            .map_err(Self::delta_err(layer, table))?;
        if latest
            .version()
            .is_some_and(|newest| (version as u64) < newest)
        {
            Self::not_vacuumed(layer, table, &delta).await?;
        }
        Self::register_files(ctx, layer, table, name, &delta, None, None).await?;
        Ok(Some(version))
    }

    /// [`Error::Vacuumed`] when a file of the old version `delta` is gone: a reader would
    /// otherwise fail on it midway through its answer.
    async fn not_vacuumed(layer: Layer, table: &str, delta: &DeltaTable) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let missing: Vec<String> = futures::stream::iter(Self::live_files(delta))
            .map(|(path, _)| async move {
                let exists = file_exists(delta, &path).await?;
                Ok::<_, deltalake::ObjectStoreError>((!exists).then_some(path))
            })
            .buffer_unordered(16)
            .try_filter_map(|missing| async move { Ok(missing) })
            .try_collect()
            .await
            .map_err(|e| Self::delta_err(layer, table)(e.into()))?;
        match missing.first() {
            None => Ok(()),
            Some(example) => Err(Error::Vacuumed {
                layer,
                table: table.to_owned(),
                version: delta.version().map_or(-1, |v| v as i64),
                missing: missing.len(),
                example: example.clone(),
            }),
        }
    }

    /// What the table's log says about it (`None` when it does not exist): its version, live
    /// files, bytes and rows (from the files' statistics), and its latest commit.
    pub async fn stats(&self, layer: Layer, table: &str) -> Result<Option<TableStats>> {
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(None);
        };
        let err = Self::delta_err(layer, table);
        let LiveFiles { files, bytes, rows } = LiveFiles::of(delta.snapshot().map_err(err)?);
        let last = match futures::StreamExt::next(&mut delta.history(Some(1))).await {
            Some(commit) => Some(commit.map_err(Self::delta_err(layer, table))?),
            None => None,
        };
        Ok(Some(TableStats {
            version: delta.version().unwrap_or(0) as i64,
            files,
            bytes,
            rows,
            last_commit_ms: last.as_ref().and_then(|c| c.timestamp),
            last_operation: last.and_then(|c| c.operation),
        }))
    }

    /// Whether a commit of `table` after version `since`, up to `until`, added, removed or
    /// reshaped data; a commit that only records offsets (`txn`) does not (see
    /// [`Lake::changes`]).
    pub async fn data_changed(
        &self,
        layer: Layer,
        table: &str,
        since: i64,
        until: i64,
    ) -> Result<bool> {
        Ok(self.changes(layer, table, since, until).await? != Changes::None)
    }

    /// How the commits of `table` after version `since`, up to `until`, changed its data.
    /// [`Changes::Rewritten`] as well when `until` is older than `since`, a commit in between
    /// cannot be read, or more than [`CHANGE_SCAN`] commits lie between (rebuilding is then
    /// cheaper than reading them).
    pub async fn changes(
        &self,
        layer: Layer,
        table: &str,
        since: i64,
        until: i64,
    ) -> Result<Changes> {
        if until == since {
            return Ok(Changes::None);
        }
        let mut changes = Changes::None;
        let read_all = self
            .each_commit(layer, table, since, until, |bytes| {
                changes = changes.max(commit_changes(bytes));
                changes != Changes::Rewritten
            })
            .await?;
        Ok(if read_all {
            changes
        } else {
            Changes::Rewritten
        })
    }

    /// Calls `visit` with each commit file of `table` after version `since`, up to `until`, in
    /// order, while it answers `true`. `Ok(false)` when it answered `false`, a commit in between
    /// cannot be read, `until` is older than `since`, or more than [`CHANGE_SCAN`] commits lie
    /// between (none is read then).
    async fn each_commit(
        &self,
        layer: Layer,
        table: &str,
        since: i64,
        until: i64,
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<bool> {
        if until < since || until - since > CHANGE_SCAN {
            return Ok(false);
        }
        let delta = self
            .builder(layer, table)?
            .build()
            .map_err(Self::delta_err(layer, table))?;
        for version in since + 1..=until {
            let entry = delta
                .log_store()
                .read_commit_entry(version as u64)
                .await
                .map_err(Self::delta_err(layer, table))?;
            match entry {
                Some(bytes) if visit(&bytes) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The live files holding every row added after version `since`, up to `until`, when those
    /// commits only added rows (see [`follow_added`]); `None` when one removed, replaced or
    /// reshaped data, could not be read, or more than [`CHANGE_SCAN`] of them lie between
    /// (as [`Lake::changes`] answers [`Changes::Rewritten`]). The paths are as the log holds
    /// them, for [`Lake::register_files`].
    pub async fn added_since(
        &self,
        layer: Layer,
        table: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<Vec<String>>> {
        let mut added = BTreeSet::new();
        let read_all = self
            .each_commit(layer, table, since, until, |bytes| {
                follow_added(bytes, &mut added)
            })
            .await?;
        Ok(read_all.then(|| added.into_iter().collect()))
    }

    /// Hours since the table's latest commit (`None` when it does not exist).
    pub async fn age_hours(&self, layer: Layer, table: &str) -> Result<Option<f64>> {
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(None);
        };
        let newest = match futures::StreamExt::next(&mut delta.history(Some(1))).await {
            Some(commit) => commit.map_err(Self::delta_err(layer, table))?.timestamp,
            None => None,
        };
        Ok(newest.map(|ms| (chrono::Utc::now().timestamp_millis() - ms) as f64 / 3_600_000.0))
    }

    /// Number of rows of a table (0 when it does not exist): from its files' statistics when
    /// each gives its count and none has a deletion vector, else by a query.
    pub async fn count(&self, layer: Layer, table: &str) -> Result<u64> {
        let Some(delta) = self.open(layer, table).await? else {
            return Ok(0);
        };
        let snapshot = delta.snapshot().map_err(Self::delta_err(layer, table))?;
        let whole = snapshot
            .log_data()
            .iter()
            .all(|file| file.deletion_vector_descriptor().is_none());
        if let (true, Some(rows)) = (whole, LiveFiles::of(snapshot).rows) {
            return Ok(rows);
        }
        let ctx = session();
        Self::register_files(&ctx, layer, table, "t", &delta, None, None).await?;
        let query = |source| Error::Query {
            layer,
            table: table.to_owned(),
            source: Box::new(source),
        };
        let df = ctx.table("t").await.map_err(query)?;
        Ok(df.count().await.map_err(query)? as u64)
    }
}

/// A table's size and latest commit, as its log tells them ([`Lake::stats`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStats {
    pub version: i64,
    pub files: u64,
    pub bytes: u64,
    /// Rows, when every file's statistics give its count.
    pub rows: Option<u64>,
    /// Milliseconds since the epoch.
    pub last_commit_ms: Option<i64>,
    pub last_operation: Option<String>,
}

/// The live files of a table's snapshot: how many, their bytes, and their rows when every
/// file's statistics give its count.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveFiles {
    pub files: u64,
    pub bytes: u64,
    pub rows: Option<u64>,
}

impl LiveFiles {
    pub fn of(snapshot: &deltalake::table::state::DeltaTableState) -> Self {
        snapshot.log_data().iter().fold(
            Self {
                rows: Some(0),
                ..Self::default()
            },
            |totals, file| Self {
                files: totals.files + 1,
                bytes: totals.bytes + file.size().max(0) as u64,
                rows: totals
                    .rows
                    .zip(file.num_records())
                    .map(|(a, b)| a + b as u64),
            },
        )
    }
}

/// Rows and null cells per column of a table's snapshot, read from its files' statistics in the
/// log (no data file is opened). A column is counted only when every file's statistics give
/// its nulls; nothing is counted when a file lacks its row count or carries a deletion vector
/// (its statistics would count rows it deletes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NullCounts {
    pub rows: u64,
    pub nulls: std::collections::HashMap<String, u64>,
}

impl NullCounts {
    /// The rows, and the nulls of those of `columns` every file's statistics count.
    pub fn of<'a>(
        snapshot: &deltalake::table::state::DeltaTableState,
        columns: impl IntoIterator<Item = &'a str>,
    ) -> Option<Self> {
        let files = FileStatistics::of(snapshot)?;
        let rows = LiveFiles::of(snapshot).rows?;
        let nulls = columns
            .into_iter()
            .filter_map(|column| {
                let total = files.nulls(column).into_iter().sum::<Option<i64>>()?;
                Some((column.to_owned(), total.max(0) as u64))
            })
            .collect();
        Some(Self { rows, nulls })
    }
}

/// The statistics the log holds for each live file of a snapshot, for its nulls per column: one
/// entry per file, `None` where a file does not give it (its rows: [`LiveFiles`]).
struct FileStatistics {
    files: Vec<serde_json::Value>,
}

impl FileStatistics {
    /// `None` when a file carries a deletion vector (its statistics would count rows it
    /// deletes) or has no statistics.
    fn of(snapshot: &deltalake::table::state::DeltaTableState) -> Option<Self> {
        let files = snapshot
            .log_data()
            .iter()
            .map(|file| {
                if file.deletion_vector_descriptor().is_some() {
                    return None;
                }
                serde_json::from_str(&file.stats()?).ok()
            })
            .collect::<Option<_>>()?;
        Some(Self { files })
    }

    fn nulls(&self, column: &str) -> Vec<Option<i64>> {
        self.files
            .iter()
            .map(|stats| stats.get("nullCount")?.get(column)?.as_i64())
            .collect()
    }
}

/// Commits [`Lake::changes`] reads at most before it answers "changed" unread.
pub const CHANGE_SCAN: i64 = 50;

/// How commits changed a table's data, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Changes {
    /// Only `txn` and `commitInfo` actions (an unchanged re-delivery records offsets), or files
    /// a compaction rewrote (`dataChange: false`).
    None,
    /// Rows added (`add` actions) and nothing removed: the rows there before are all there.
    Appended,
    /// Rows removed or replaced (`remove` actions: a MERGE's update or delete, an overwrite),
    /// or the table reshaped (`metaData`, `protocol`), or an unreadable line.
    Rewritten,
}

/// What a commit file (JSON lines, one action each) did to the table's data.
fn commit_changes(bytes: &[u8]) -> Changes {
    commit_actions(bytes)
        .map(|action| match action {
            Some(action) => action
                .iter()
                .map(|(kind, body)| match kind.as_str() {
                    "txn" | "commitInfo" => Changes::None,
                    // A compaction's files say `dataChange: false`.
                    _ if !changes_data(body) => Changes::None,
                    "add" => Changes::Appended,
                    _ => Changes::Rewritten,
                })
                .max()
                .unwrap_or(Changes::None),
            None => Changes::Rewritten,
        })
        .max()
        .unwrap_or(Changes::None)
}

/// The actions of a commit file (JSON lines, one action each, blank lines skipped); `None` for
/// a line that does not parse.
fn commit_actions(
    bytes: &[u8],
) -> impl Iterator<Item = Option<serde_json::Map<String, serde_json::Value>>> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| serde_json::from_slice(line).ok())
}

/// Whether an action's body changes data: all but a compaction's (`dataChange: false`).
fn changes_data(body: &serde_json::Value) -> bool {
    body.get("dataChange") != Some(&serde_json::Value::Bool(false))
}

/// Follows one commit (JSON lines, one action each) in `added`, the live files that hold the
/// rows added since some version: its data files are added; a compaction (`dataChange: false`)
/// that removes one of them moves those rows into the files it adds, which are followed in
/// their place (a compaction of older files only is not: it holds no added row). `false` when
/// the commit did more than add rows: removed or replaced data, reshaped the table, or an
/// action this does not know, or a line that does not parse.
fn follow_added(bytes: &[u8], added: &mut BTreeSet<String>) -> bool {
    let mut compacted = Vec::new();
    let mut moved = false;
    for action in commit_actions(bytes) {
        let Some(action) = action else {
            return false;
        };
        for (kind, body) in &action {
            let path = body.get("path").and_then(serde_json::Value::as_str);
            match (kind.as_str(), path, changes_data(body)) {
                ("txn" | "commitInfo", _, _) => {}
                ("add", Some(path), true) => {
                    added.insert(path.to_owned());
                }
                ("add", Some(path), false) => compacted.push(path.to_owned()),
                ("remove", Some(path), false) => moved |= added.remove(path),
                _ => return false,
            }
        }
    }
    if moved {
        added.extend(compacted);
    }
    true
}

/// Whether the file at `path` (as the log names it, relative to the table) is in `delta`'s store.
async fn file_exists(delta: &DeltaTable, path: &str) -> Result<bool, deltalake::ObjectStoreError> {
    let store = delta.log_store().object_store(None);
    match object_store::ObjectStoreExt::head(&store, &deltalake::Path::from(path)).await {
        Ok(_) => Ok(true),
        Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The transaction versions of `apps` in `delta`'s snapshot (absent ids are left out).
async fn versions_in(
    delta: &DeltaTable,
    apps: impl Iterator<Item = &String>,
) -> Result<TxnVersions, DeltaTableError> {
    let snapshot = delta.snapshot()?;
    let mut out = TxnVersions::new();
    for app in apps {
        if let Some(version) = snapshot
            .transaction_version(delta.log_store().as_ref(), app)
            .await?
        {
            out.insert(app.clone(), version);
        }
    }
    Ok(out)
}

/// Who retries a commit that lost a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// delta-rs: it checks the winning commits for conflicts and commits on top of them.
    ByDelta,
    /// The caller, which re-reads what it depends on (the txn versions) from the new snapshot.
    /// delta-rs's own retry cannot be trusted with txn versions: when two writers create a
    /// table at once, the loser commits as version 1 without checking version 0 for conflicts
    /// (deltalake-core 1.1), and every row of the batch lands twice (seen in the race test).
    Ours,
}

/// Where a write puts its rows: partitions, and files of a size.
struct Placement<'a> {
    partition_by: &'a [&'a str],
    /// See [`Files::target_bytes`].
    target_bytes: Option<NonZeroU64>,
}

/// How a commit lays out its files.
struct Files {
    /// `delta.dataSkippingStatsColumns` of a table the commit creates.
    stats_columns: Option<String>,
    /// Parquet bytes after which a file is closed and the next begun (one file when `None`).
    target_bytes: Option<NonZeroU64>,
}

/// Rows of a file in the tables written by [`Lake::write_in_files`] and [`Lake::replace_files`]
/// (silver's DIFF tables): stored in arrival order, a delivery that updates a few rows finds the
/// files that hold their keys and rewrites those, not the table (silver's `touched_files`). At
/// scale 1 a 100 k-row table is five to seven such files, and the 1% delivery rewrites one of
/// each instead of six tables whole.
pub const FILE_ROWS: usize = 1 << 14;

/// The live file (its path as the log holds it, one of `paths`) that a scan's file column names
/// with `scanned` (a path or a URL ending in it), if one does.
pub fn file_of<'a>(scanned: &str, paths: &'a [String]) -> Option<&'a String> {
    paths.iter().find(|path| {
        scanned == path.as_str()
            || scanned
                .strip_suffix(path.as_str())
                .is_some_and(|head| head.ends_with('/'))
    })
}

/// About the Parquet bytes of [`FILE_ROWS`] rows like those of `batches`, the size at which the
/// writer closes a file (values in plain encoding: text as its length and bytes, a fixed-width
/// value as its width; a codec that shrinks a column makes the file hold more rows); `None`
/// without rows.
fn file_bytes(batches: &[RecordBatch]) -> Option<NonZeroU64> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::DataType;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return None;
    }
    let bytes: usize = batches
        .iter()
        .flat_map(|batch| batch.columns())
        .map(|column| match column.data_type() {
            DataType::Utf8View => column
                .as_string_view()
                .lengths()
                .map(|n| n as usize + 4)
                .sum(),
            DataType::BinaryView => column
                .as_binary_view()
                .lengths()
                .map(|n| n as usize + 4)
                .sum(),
            DataType::Utf8 => {
                let text = column.as_string::<i32>();
                text.value_data().len() + 4 * text.len()
            }
            DataType::LargeUtf8 => {
                let text = column.as_string::<i64>();
                text.value_data().len() + 4 * text.len()
            }
            other => match other.primitive_width() {
                Some(width) => width * column.len(),
                None => column.get_array_memory_size(),
            },
        })
        .sum();
    NonZeroU64::new((bytes / rows * FILE_ROWS).max(1) as u64)
}

/// See [`Lake::replace_files`].
async fn replace(
    delta: &DeltaTable,
    table: &str,
    removed: &[String],
    batches: Vec<RecordBatch>,
    txns: Vec<(String, i64)>,
) -> Result<DeltaTable, DeltaTableError> {
    use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
    use deltalake::kernel::Action;
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::protocol::DeltaOperation;
    use deltalake::table::config::TablePropertiesExt;
    let snapshot = delta.snapshot()?;
    let wanted: std::collections::HashSet<&str> = removed.iter().map(String::as_str).collect();
    let mut actions: Vec<Action> = snapshot
        .log_data()
        .iter()
        .filter(|file| wanted.contains(file.path().as_ref()))
        .map(|file| Action::Remove(file.remove_action(true)))
        .collect();
    if actions.len() != wanted.len() {
        return Err(DeltaTableError::Generic(format!(
            "{} of the {} files to replace are not live in version {:?}",
            wanted.len() - actions.len(),
            wanted.len(),
            delta.version()
        )));
    }
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if let Some(first) = batches.first() {
        let properties = snapshot.table_config();
        let config = WriterConfig::new(
            first.schema(),
            Vec::new(),
            Some(writer_properties(&batches)),
            file_bytes(&batches),
            None,
            properties.num_indexed_cols(),
            properties
                .data_skipping_stats_columns
                .as_ref()
                .map(|columns| columns.iter().map(ToString::to_string).collect()),
        );
        let mut writer = DeltaWriter::new(delta.log_store().object_store(None), config);
        for batch in &batches {
            writer.write(batch).await?;
        }
        actions.extend(writer.close().await?.into_iter().map(Action::Add));
    }
    crate::fault::crash_point(&format!("lake-files-written:{table}"));
    let operation = DeltaOperation::Merge {
        // No predicate: the commit read the whole table (its keys), so any commit before it
        // conflicts.
        predicate: None,
        merge_predicate: None,
        matched_predicates: Vec::new(),
        not_matched_predicates: Vec::new(),
        not_matched_by_source_predicates: Vec::new(),
    };
    let commit = CommitProperties::default().with_application_transactions(
        txns.into_iter()
            .map(|(app, version)| Transaction::new(app, version))
            .collect(),
    );
    let committed = CommitBuilder::from(commit)
        .with_actions(actions)
        .build(Some(snapshot), delta.log_store(), operation)
        .await?;
    let mut replaced = delta.clone();
    replaced.state = Some(committed.snapshot);
    Ok(replaced)
}

/// Writes `batches` and `txns` in one commit on top of `delta`'s snapshot; returns the table at
/// the version committed (its snapshot brought forward by the commit's own actions).
async fn commit(
    delta: DeltaTable,
    batches: Vec<RecordBatch>,
    partition_by: &[&str],
    txns: Vec<(String, i64)>,
    overwrite: bool,
    retry: Retry,
    files: Files,
) -> Result<DeltaTable, DeltaTableError> {
    let creating = delta.version().is_none();
    let mut commit = CommitProperties::default().with_application_transactions(
        txns.into_iter()
            .map(|(app, version)| Transaction::new(app, version))
            .collect(),
    );
    if retry == Retry::Ours {
        commit = commit.with_max_retries(0);
    }
    let properties = writer_properties(&batches);
    let mut write = delta
        .write(batches)
        .with_writer_properties(properties)
        .with_save_mode(if overwrite {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        })
        .with_commit_properties(commit);
    if overwrite {
        // A replaced table may change shape (a gold model whose SQL changed).
        write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
    }
    if !partition_by.is_empty() {
        write = write.with_partition_columns(partition_by.iter().map(|c| (*c).to_owned()));
    }
    if let Some(bytes) = files.target_bytes {
        write = write.with_target_file_size(Some(bytes));
    }
    if creating && let Some(columns) = files.stats_columns {
        write = write.with_configuration([("delta.dataSkippingStatsColumns", Some(columns))]);
    }
    write.await
}

/// The environment variable that picks the Parquet codec.
pub const COMPRESSION_VAR: &str = "FRAMEWORK_PARQUET_COMPRESSION";

/// The Parquet codec of the files the lake writes: `lz4_raw` (the default: a first delivery at
/// scale 1 took 7-9% less time than with Snappy, for 2% more bytes), or `snappy` for readers
/// that do not know LZ4_RAW (Spark before 3.4, parquet-mr before 1.13), or `zstd` (smaller,
/// slower to write), from [`COMPRESSION_VAR`]; another value is an error naming the choices.
pub fn compression() -> Result<deltalake::parquet::basic::Compression, String> {
    use deltalake::parquet::basic::{Compression, ZstdLevel};
    match std::env::var(COMPRESSION_VAR).as_deref() {
        Err(_) | Ok("" | "lz4_raw") => Ok(Compression::LZ4_RAW),
        Ok("snappy") => Ok(Compression::SNAPPY),
        Ok("zstd") => Ok(Compression::ZSTD(ZstdLevel::default())),
        Ok(other) => Err(format!(
            "{COMPRESSION_VAR}={other:?} is not a Parquet codec this lake writes\n  hint: \
             lz4_raw (the default), snappy (for Spark before 3.4) or zstd"
        )),
    }
}

/// Parquet settings of every file the lake writes: the codec ([`compression`]), statistics per
/// column chunk (Delta's file statistics come from them; per-page ones cost time on every
/// write), and dictionary encoding only for the columns known to repeat a few values: for the
/// others the writer builds a dictionary, outgrows it and falls back to plain, which halved
/// bronze's write speed. Under LZ4_RAW or Snappy, a column of `batches` that the codec would
/// not shrink is stored uncompressed (see [`incompressible`]). Every write and MERGE of the
/// lake uses them.
pub fn writer_properties(
    batches: &[RecordBatch],
) -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use deltalake::parquet::schema::types::ColumnPath;
    // The CLI refused a bad choice at start.
    let codec = compression().unwrap_or(Compression::LZ4_RAW);
    let mut builder = ["_topic", "_partition"].into_iter().fold(
        WriterProperties::builder()
            .set_compression(codec)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_dictionary_enabled(false),
        |builder, column| builder.set_column_dictionary_enabled(ColumnPath::from(column), true),
    );
    if matches!(codec, Compression::LZ4_RAW | Compression::SNAPPY)
        && let Some(first) = batches.first()
    {
        for (field, column) in first.schema().fields().iter().zip(first.columns()) {
            if incompressible(column) {
                builder = builder.set_column_compression(
                    ColumnPath::from(field.name().as_str()),
                    Compression::UNCOMPRESSED,
                );
            }
        }
    }
    builder.build()
}

/// Rows of a column sampled to tell whether it compresses.
const SAMPLE_ROWS: usize = 4096;

/// Whether a flat column's first [`SAMPLE_ROWS`] values, laid out as Parquet's plain encoding
/// lays them out, shrink by less than a sixth under LZ4 (a byte-matching codec like Snappy):
/// hexadecimal ids and hashes, floating-point measures. In the scale-1 lake such columns made
/// up most of silver's bytes and compressed 1.00-1.05x, while a 1% delivery spent 12% of its
/// CPU time in LZ4 (writing them, and reading them back). Nested and boolean columns, and
/// samples under 1 KiB, are left to the codec.
fn incompressible(column: &deltalake::arrow::array::ArrayRef) -> bool {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::DataType;
    let column = column.slice(0, column.len().min(SAMPLE_ROWS));
    let mut plain: Vec<u8> = Vec::new();
    match column.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => {
            // Every text and binary layout as one: each value after its length.
            let Ok(values) = deltalake::arrow::compute::cast(&column, &DataType::LargeBinary)
            else {
                return false;
            };
            for value in values.as_binary::<i64>().iter().flatten() {
                plain.extend_from_slice(&(value.len() as u32).to_le_bytes());
                plain.extend_from_slice(value);
            }
        }
        other if other.is_primitive() => {
            let Some(width) = other.primitive_width() else {
                return false;
            };
            let data = column.to_data();
            let start = data.offset() * width;
            let bytes = data.buffers()[0].as_slice();
            plain.extend_from_slice(&bytes[start..start + data.len() * width]);
        }
        _ => return false,
    }
    plain.len() >= 1024 && lz4_flex::block::compress(&plain).len() * 6 > plain.len() * 5
}

/// Whether a commit lost a race against a commit of the same application transactions (or of
/// the table's first version), so that retrying on the newer snapshot is the right move.
fn is_concurrent(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(
                    CommitConflictError::ConcurrentTransaction
                        | CommitConflictError::ProtocolChanged(_)
                        | CommitConflictError::MetadataChanged
                ) | TransactionError::VersionAlreadyExists(_)
                    | TransactionError::MaxCommitAttempts(_)
            }
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A lake whose silver `t` (one column `k`) was written in three commits of a small file
    /// each: keys 1 and 2, 3, then 4 and 5.
    async fn three_small_files() -> (tempfile::TempDir, Lake) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let schema = Arc::new(deltalake::arrow::datatypes::Schema::new(vec![
            deltalake::arrow::datatypes::Field::new(
                "k",
                deltalake::arrow::datatypes::DataType::Int64,
                false,
            ),
        ]));
        for values in [vec![1, 2], vec![3], vec![4, 5]] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(deltalake::arrow::array::Int64Array::from(values))],
            )
            .unwrap();
            lake.write(Layer::Silver, "t", vec![batch], &[], vec![], false)
                .await
                .unwrap();
        }
        (dir, lake)
    }

    /// A table exists once it has a commit, in this process's cache or not.
    #[tokio::test]
    async fn a_table_exists_once_it_has_a_commit() {
        let (dir, lake) = three_small_files().await;
        assert!(lake.exists(Layer::Silver, "t").await.unwrap());
        assert!(!lake.exists(Layer::Silver, "other").await.unwrap());
        assert!(!lake.exists(Layer::Bronze, "t").await.unwrap());
        let fresh = Lake::at(&dir.path().to_string_lossy());
        assert!(fresh.exists(Layer::Silver, "t").await.unwrap());
    }

    /// Compaction rewrites small files into one, keeps every row, and is not a data change to
    /// gold's "did my inputs change" test.
    #[tokio::test]
    async fn compaction_keeps_the_rows_and_is_not_a_data_change() {
        let (_dir, lake) = three_small_files().await;
        let before = lake.version(Layer::Silver, "t").await.unwrap().unwrap();
        assert_eq!(lake.compact(Layer::Silver, "t", 3).await.unwrap(), 0);
        assert_eq!(lake.compact(Layer::Silver, "t", 1).await.unwrap(), 3);
        let after = lake.version(Layer::Silver, "t").await.unwrap().unwrap();
        assert_eq!(after, before + 1);
        let stats = lake.stats(Layer::Silver, "t").await.unwrap().unwrap();
        assert_eq!((stats.files, stats.rows), (1, Some(5)));
        assert!(
            !lake
                .data_changed(Layer::Silver, "t", before, after)
                .await
                .unwrap()
        );
    }

    /// The files holding the rows added since a version: the appends' own files; after a
    /// compaction of them, the file it wrote (it holds them, with older rows); none after a
    /// compaction of older files only; `None` once a commit replaced rows.
    #[tokio::test]
    async fn the_rows_added_since_a_version_are_followed_through_a_compaction() {
        use deltalake::arrow::array::Int64Array;
        let (_dir, lake) = three_small_files().await;
        let keys = |paths: Vec<String>| {
            let lake = &lake;
            async move {
                let ctx = session();
                let delta = lake.open(Layer::Silver, "t").await.unwrap().unwrap();
                Lake::register_files(&ctx, Layer::Silver, "t", "t", &delta, Some(&paths), None)
                    .await
                    .unwrap();
                let frame = ctx.sql("SELECT k FROM t ORDER BY k").await.unwrap();
                let batches = frame.collect().await.unwrap();
                batches
                    .iter()
                    .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap())
                    .map(Option::unwrap)
                    .collect::<Vec<i64>>()
            }
        };
        let added = lake.added_since(Layer::Silver, "t", 0, 2).await.unwrap();
        assert_eq!(keys(added.unwrap()).await, vec![3, 4, 5]);
        assert_eq!(lake.compact(Layer::Silver, "t", 1).await.unwrap(), 3);
        let moved = lake.added_since(Layer::Silver, "t", 1, 3).await.unwrap();
        assert_eq!(keys(moved.unwrap()).await, vec![1, 2, 3, 4, 5]);
        let since_compaction = lake.added_since(Layer::Silver, "t", 3, 3).await.unwrap();
        assert_eq!(since_compaction, Some(vec![]));
        let batch = RecordBatch::try_new(
            Arc::new(deltalake::arrow::datatypes::Schema::new(vec![
                deltalake::arrow::datatypes::Field::new(
                    "k",
                    deltalake::arrow::datatypes::DataType::Int64,
                    false,
                ),
            ])),
            vec![Arc::new(Int64Array::from(vec![6]))],
        )
        .unwrap();
        lake.write(Layer::Silver, "t", vec![batch.clone()], &[], vec![], false)
            .await
            .unwrap();
        let appended = lake.added_since(Layer::Silver, "t", 3, 4).await.unwrap();
        assert_eq!(keys(appended.unwrap()).await, vec![6]);
        lake.write(Layer::Silver, "t", vec![batch], &[], vec![], true)
            .await
            .unwrap();
        assert_eq!(
            lake.added_since(Layer::Silver, "t", 3, 5).await.unwrap(),
            None
        );
        assert_eq!(
            lake.added_since(Layer::Silver, "t", 0, 60).await.unwrap(),
            None
        );
    }

    /// Vacuum deletes the files commits removed once they are older than the retention, and
    /// only those: the live files and every row stay, a retention longer than their age keeps
    /// them, and a second vacuum finds nothing left and commits nothing.
    #[tokio::test]
    async fn vacuum_deletes_the_removed_files_past_the_retention_and_keeps_the_rows() {
        use deltalake::arrow::array::Int64Array;
        let (_dir, lake) = three_small_files().await;
        assert_eq!(lake.compact(Layer::Silver, "t", 1).await.unwrap(), 3);
        let on_disk = || {
            let mut files: Vec<String> = std::fs::read_dir(lake.table_path(Layer::Silver, "t"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".parquet"))
                .collect();
            files.sort();
            files
        };
        assert_eq!(on_disk().len(), 4);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(lake.vacuum(Layer::Silver, "t", hour).await.unwrap(), 0);
        assert_eq!(on_disk().len(), 4);
        let before = lake.version(Layer::Silver, "t").await.unwrap().unwrap();
        let now = std::time::Duration::ZERO;
        assert_eq!(lake.vacuum(Layer::Silver, "t", now).await.unwrap(), 3);
        let after = lake.version(Layer::Silver, "t").await.unwrap().unwrap();
        assert_eq!(after, before + 2, "VACUUM START and VACUUM END");
        let delta = lake.open(Layer::Silver, "t").await.unwrap().unwrap();
        let live: Vec<String> = Lake::live_files(&delta)
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(on_disk(), live);
        assert!(
            !lake
                .data_changed(Layer::Silver, "t", before, after)
                .await
                .unwrap()
        );
        let ctx = SessionContext::new();
        lake.register(&ctx, Layer::Silver, "t", "t").await.unwrap();
        let rows = ctx
            .sql("SELECT k FROM t ORDER BY k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let keys: Vec<i64> = rows
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(keys, [1, 2, 3, 4, 5]);
        // The log still lists the three removed files; they are gone, so nothing is committed.
        assert_eq!(lake.vacuum(Layer::Silver, "t", now).await.unwrap(), 0);
        assert_eq!(lake.version(Layer::Silver, "t").await.unwrap(), Some(after));
    }

    /// The nulls of a column are summed over every file's statistics, counted by hand here; a
    /// column past those the statistics index (the first 32) is not counted, so a check falls
    /// back to scanning it.
    #[tokio::test]
    async fn nulls_and_rows_are_summed_over_the_files_statistics() {
        use deltalake::arrow::array::{ArrayRef, Int64Array};
        use deltalake::arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let schema = Arc::new(Schema::new(
            (0..40)
                .map(|c| Field::new(format!("c{c}"), DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        // c0 has 0, 2 and 1 nulls in the three files; c39 one null in the last.
        for c0 in [
            vec![Some(1), Some(2)],
            vec![None, Some(3), None],
            vec![None, Some(4), Some(5), Some(6)],
        ] {
            let rows = c0.len();
            let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(c0))];
            for c in 1..40 {
                let mut values = vec![Some(c); rows];
                if c == 39 && rows == 4 {
                    values[0] = None;
                }
                columns.push(Arc::new(Int64Array::from(values)));
            }
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
            lake.write(Layer::Silver, "t", vec![batch], &[], vec![], false)
                .await
                .unwrap();
        }
        let delta = lake.open(Layer::Silver, "t").await.unwrap().unwrap();
        let counts = NullCounts::of(delta.snapshot().unwrap(), ["c0", "c1", "c39"]).unwrap();
        assert_eq!(counts.rows, 9);
        assert_eq!(counts.nulls.get("c0"), Some(&3));
        assert_eq!(counts.nulls.get("c1"), Some(&0));
        assert_eq!(counts.nulls.get("c39"), None);
    }

    /// Hexadecimal ids and floating-point measures, which LZ4 does not shrink, are written
    /// uncompressed; a column that repeats a few values, and small integers, keep the codec. The
    /// file reads back the same either way.
    #[tokio::test]
    async fn columns_the_codec_would_not_shrink_are_written_uncompressed() {
        use deltalake::arrow::array::{Float64Array, Int64Array, StringArray, StringViewArray};
        use deltalake::arrow::datatypes::{DataType, Field, Schema};
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use deltalake::parquet::basic::Compression;
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let rows = 5000;
        let digest = |i: usize| blake3::hash(&i.to_le_bytes());
        let ids: Vec<String> = (0..rows)
            .map(|i| digest(i).to_hex()[..32].to_owned())
            .collect();
        let view_ids = StringViewArray::from_iter_values(ids.iter());
        let measures: Vec<f64> = (0..rows)
            .map(|i| {
                let bits = u64::from_le_bytes(digest(i).as_bytes()[..8].try_into().unwrap());
                (bits >> 11) as f64 / (1u64 << 53) as f64 * 1000.0
            })
            .collect();
        let statuses = ["delivered", "shipped", "canceled"];
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("measure", DataType::Float64, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("view_id", DataType::Utf8View, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Float64Array::from(measures)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| statuses[i % 3]),
                )),
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(view_ids),
            ],
        )
        .unwrap();
        lake.write(Layer::Silver, "t", vec![batch.clone()], &[], vec![], false)
            .await
            .unwrap();
        let file = std::fs::read_dir(lake.table_path(Layer::Silver, "t"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|e| e == "parquet"))
            .expect("a data file");
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        let codecs: Vec<(String, Compression)> = reader.metadata().row_groups()[0]
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), c.compression()))
            .collect();
        let expected = [
            ("id", Compression::UNCOMPRESSED),
            ("measure", Compression::UNCOMPRESSED),
            ("status", Compression::LZ4_RAW),
            ("n", Compression::LZ4_RAW),
            ("view_id", Compression::UNCOMPRESSED),
        ];
        let expected: Vec<(String, Compression)> =
            expected.iter().map(|(c, z)| (c.to_string(), *z)).collect();
        assert_eq!(codecs, expected);
        let read: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            deltalake::arrow::compute::concat_batches(&batch.schema(), &read).unwrap(),
            batch
        );
    }

    #[test]
    fn a_scanned_file_is_matched_to_the_log_path_it_ends_with_whole() {
        let paths = vec!["part-1.parquet".to_owned(), "x/part-2.parquet".to_owned()];
        assert_eq!(file_of("part-1.parquet", &paths), Some(&paths[0]));
        assert_eq!(
            file_of("file:///lake/t/part-1.parquet", &paths),
            Some(&paths[0])
        );
        assert_eq!(
            file_of("s3://b/t/x/part-2.parquet", &paths),
            Some(&paths[1])
        );
        assert_eq!(file_of("file:///lake/t/apart-1.parquet", &paths), None);
        assert_eq!(file_of("file:///lake/t/part-3.parquet", &paths), None);
    }

    /// A kill between creating a table's log folder and its first commit leaves the folder
    /// without a commit: the table reads as never written, and the next write creates it.
    #[tokio::test]
    async fn a_log_folder_without_a_commit_is_a_table_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let log = lake.table_path(Layer::Silver, "t").join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join(".tmp_00000000000000000000.json.part"), b"{").unwrap();
        assert!(lake.open(Layer::Silver, "t").await.unwrap().is_none());
        let schema = Arc::new(deltalake::arrow::datatypes::Schema::new(vec![
            deltalake::arrow::datatypes::Field::new(
                "k",
                deltalake::arrow::datatypes::DataType::Int64,
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(deltalake::arrow::array::Int64Array::from(vec![
                7, 8,
            ]))],
        )
        .unwrap();
        lake.write(Layer::Silver, "t", vec![batch], &[], vec![], true)
            .await
            .unwrap();
        let table = lake
            .open(Layer::Silver, "t")
            .await
            .unwrap()
            .expect("written");
        assert_eq!(table.version(), Some(0));
        assert!(has_commit(&log));
    }

    /// A write keeps the snapshot its commit produced: right after each write (append,
    /// overwrite, an exactly-once append, a compaction, a commit replacing files), the cache
    /// holds the version just committed, and the snapshot it gives holds the same files, rows
    /// and offsets as the log read afresh by another `Lake`.
    #[tokio::test]
    async fn a_write_keeps_the_snapshot_it_committed_and_it_matches_the_log() {
        use deltalake::arrow::array::{Int32Array, Int64Array};
        use deltalake::arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let schema = Arc::new(Schema::new(vec![
            Field::new(crate::offsets::PARTITION, DataType::Int32, false),
            Field::new(crate::offsets::OFFSET, DataType::Int64, false),
        ]));
        let rows = |offsets: Vec<i64>| {
            let partitions = Int32Array::from(vec![0; offsets.len()]);
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(partitions), Arc::new(Int64Array::from(offsets))],
            )
            .unwrap()
        };
        let cached = |lake: &Lake| {
            lake.snapshots
                .lock()
                .unwrap()
                .get(&(Layer::Bronze, "t".to_owned()))
                .and_then(DeltaTable::version)
        };
        // Two appends, then an overwrite.
        let writes = [(vec![0, 1], false), (vec![2], false), (vec![0, 1, 2], true)];
        for (version, (offsets, overwrite)) in writes.into_iter().enumerate() {
            lake.write(
                Layer::Bronze,
                "t",
                vec![rows(offsets)],
                &[],
                vec![],
                overwrite,
            )
            .await
            .unwrap();
            assert_eq!(cached(&lake), Some(version as u64));
        }
        let cursor = crate::offsets::Cursor::new(crate::offsets::Stage::Bronze, "topic", 1);
        let mut ends = cursor.ends();
        ends.reach(0, 5);
        let appended = lake
            .append_past(Layer::Bronze, "t", &rows(vec![3, 4]), &[], &ends)
            .await
            .unwrap();
        assert_eq!(appended, 2);
        assert_eq!(cached(&lake), Some(3));
        // A compaction of the two files into one, then a commit that replaces that file.
        assert_eq!(lake.compact(Layer::Bronze, "t", 1).await.unwrap(), 2);
        assert_eq!(cached(&lake), Some(4));
        let compacted = lake.open(Layer::Bronze, "t").await.unwrap().unwrap();
        let removed: Vec<String> = Lake::live_files(&compacted)
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(removed.len(), 1);
        lake.replace_files(
            Layer::Bronze,
            "t",
            &compacted,
            &removed,
            vec![rows(vec![0, 1, 2, 3, 4, 5])],
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(cached(&lake), Some(5));
        let written = lake.open(Layer::Bronze, "t").await.unwrap().unwrap();
        assert_eq!(Lake::live_files(&written).len(), 1);
        assert_eq!(lake.count(Layer::Bronze, "t").await.unwrap(), 6);
        let fresh = Lake::at(&dir.path().to_string_lossy())
            .open(Layer::Bronze, "t")
            .await
            .unwrap()
            .unwrap();
        // The offset the exactly-once append recorded, in both snapshots: partition 0 next at 5.
        for snapshot in [&written, &fresh] {
            let recorded = Lake::txn_versions_in(snapshot, Layer::Bronze, "t", &cursor.app_ids())
                .await
                .unwrap();
            assert_eq!(cursor.offsets(&recorded).next(0), 5, "{recorded:?}");
        }
        let (mut ours, mut theirs) = (Lake::live_files(&written), Lake::live_files(&fresh));
        ours.sort();
        theirs.sort();
        assert_eq!(written.version(), fresh.version());
        assert_eq!(ours, theirs);
    }
}
