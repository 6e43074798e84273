//! Bronze -> silver for one table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::{DataFrame, SessionContext, col};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;

use crate::idcard::compile::enrich_column_names;
use crate::idcard::{Action, Mode, Project, Table};
use crate::lake::{Lake, Layer, LiveFiles, collect_batches, session};
use crate::offsets::{Cursor, Ends, OFFSET, Offsets, PARTITION, Stage};

use super::known_keys::KnownKeys;
use super::sql::{
    ident, ident_list, key_match, key_match_joinable, literal, normalised, passes, row_rules,
    rule_name,
};
use super::{Error, Result};

/// What a silver run did.
#[derive(Debug, Clone, Default)]
pub struct SilverStats {
    /// New bronze rows read.
    pub rows_in: u64,
    /// Rows moved to the quarantine table.
    pub quarantined: u64,
    /// Rows left out by `drop` expectations.
    pub dropped: u64,
    /// Failures of `warn` expectations, per rule.
    pub warnings: BTreeMap<String, u64>,
    /// Rows the batch held after dedup (applied to silver).
    pub applied: u64,
    /// Rows in silver afterwards.
    pub rows_after: u64,
    pub seconds: f64,
}

/// Silver settings (runtime, not part of the idcard).
#[derive(Debug, Clone)]
pub struct SilverOptions {
    /// Bronze offsets a silver commit takes at most from each partition: a larger delivery is
    /// refined in several commits, so memory stays bounded whatever its size. A FULL table's
    /// delivery replaces silver, so it is always one commit. An APPEND table's commits take
    /// half as many: its windows cost little each (the keys of the windows before are carried
    /// as hashes, no MERGE), and half a window leaves room for a DIFF table's delivery to be
    /// refined beside it (see `pipeline::run`'s refine lane).
    pub batch_size: u64,
    /// The data keys of PII columns: an unchanged row sent again has a new ciphertext in each
    /// randomized column, and silver tells it from a change by the plaintext (without the key,
    /// such a row counts as changed and is rewritten).
    pub keys: Arc<crate::pii::Keyring>,
}

impl Default for SilverOptions {
    fn default() -> Self {
        Self {
            batch_size: 500_000,
            keys: Arc::default(),
        }
    }
}

/// Brings silver up to date with bronze for `table`, holding the table's lease throughout (one
/// silver writer per table; a concurrent run waits, then finds the batch done).
pub async fn refine(
    lake: &Lake,
    project: &Project,
    table: &Table,
    options: &SilverOptions,
) -> Result<SilverStats> {
    refine_announcing(lake, project, table, options, || {}).await
}

/// [`refine`], calling `table_in` once the table itself is up to date, before its `latest_by`
/// tables are rebuilt (what reads only the table may start then).
pub async fn refine_announcing(
    lake: &Lake,
    project: &Project,
    table: &Table,
    options: &SilverOptions,
    table_in: impl FnOnce(),
) -> Result<SilverStats> {
    let leasing = Instant::now();
    let _lease = lake.lease(Layer::Silver, table.name()).await?;
    let lease_s = leasing.elapsed().as_secs_f64();
    let mut stats = refine_leased(lake, project, table, options).await?;
    let refine_s = stats.seconds;
    table_in();
    let started = Instant::now();
    refresh_latest_by(lake, table).await?;
    crate::fault::crash_point(&format!("silver-after-latest-by:{}", table.name()));
    let latest_by_s = started.elapsed().as_secs_f64();
    stats.rows_after = lake.count(Layer::Silver, table.name()).await?;
    stats.seconds += started.elapsed().as_secs_f64();
    tracing::debug!(
        table = table.name(),
        lease_s,
        refine_s,
        latest_by_s,
        count_s = stats.seconds - refine_s - latest_by_s,
        "silver: refined"
    );
    Ok(stats)
}

async fn refine_leased(
    lake: &Lake,
    project: &Project,
    table: &Table,
    options: &SilverOptions,
) -> Result<SilverStats> {
    let started = Instant::now();
    let name = table.name();
    let query = query_error(name);
    let ctx = session();
    let mut stats = SilverStats::default();
    let Some(bronze) = lake
        .register_snapshot(&ctx, Layer::Bronze, name, "bronze")
        .await?
    else {
        return Ok(stats);
    };
    let register_s = started.elapsed().as_secs_f64();
    let partitions = table.config.topic.partitions;
    let cursor = Cursor::new(Stage::Silver, table.topic(), partitions);
    let done = cursor.read(lake, Layer::Silver, name).await?;
    let filter = done.sql_past();
    let cursor_s = started.elapsed().as_secs_f64() - register_s;

    // Where the delivery ends in each partition: at the offset bronze takes next there, which
    // it records with its rows in each commit (every row before it is in bronze, or in the
    // reject table), read from the snapshot registered. A partition bronze has no record of
    // (a table written some other way) makes a query find the last offset of each instead.
    let mut ends = cursor.ends();
    let ingested = Cursor::new(Stage::Bronze, table.topic(), partitions);
    let recorded = Lake::txn_versions_in(&bronze, Layer::Bronze, name, &ingested.app_ids()).await?;
    let from_bronze_records = recorded.len() == partitions as usize;
    if from_bronze_records {
        let next = ingested.offsets(&recorded);
        for partition in 0..partitions {
            if next.next(partition) > done.next(partition) {
                ends.reach(partition, next.next(partition));
            }
        }
    } else {
        let last = collect(&ctx, &format!("SELECT {PARTITION}, max({OFFSET}) + 1 AS e FROM bronze WHERE {filter} GROUP BY {PARTITION}"))
            .await
            .map_err(query)?;
        for batch in &last {
            let parts = batch
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
            let end = batch.column(1).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                ends.reach(parts.value(i) as u32, end.value(i));
            }
        }
    }
    tracing::debug!(
        table = name,
        register_s,
        cursor_s,
        from_bronze_records,
        seconds = started.elapsed().as_secs_f64(),
        "silver: delivery's ends found"
    );
    if ends.txns(&done).is_empty() {
        stats.seconds = started.elapsed().as_secs_f64();
        return Ok(stats);
    }
    let checks = RowChecks::of(table);
    // fail: stop before anything of the delivery is written.
    if checks.can_fail {
        stop_on_failures(&ctx, table, &checks.sql(&filter)).await?;
    }
    // Windows of at most `batch_size` offsets per partition (half that for APPEND, see
    // `SilverOptions::batch_size`), each its own exactly-once commit.
    let window = match table.mode() {
        Mode::Full => i64::MAX,
        Mode::Append => (options.batch_size / 2).clamp(1, i64::MAX as u64) as i64,
        Mode::Diff => options.batch_size.clamp(1, i64::MAX as u64) as i64,
    };
    // Each batch in a session of its own (its in-memory tables are its own), on the same bronze
    // snapshot.
    let bronze = ctx.table_provider("bronze").await.map_err(query)?;
    let mut known = known_keys(lake, table, &ends, &done, window).await?;
    let mut from = done;
    loop {
        let batch = ends.window(&from, window);
        if batch.is_empty() {
            break;
        }
        let txns = batch.txns(&from);
        let filter = from.sql_until(&batch);
        let ctx = session();
        ctx.register_table("bronze", bronze.clone())
            .map_err(query)?;
        crate::pii::udf::register_same(&ctx, &options.keys);
        refine_batch(
            lake,
            project,
            table,
            &ctx,
            &cursor,
            &checks,
            &filter,
            txns,
            known.as_mut(),
            &mut stats,
        )
        .await?;
        from = from.advanced(&batch);
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Most keys [`known_keys`] makes room for up front: a hash table of 2^24 slots, about 150 MiB
/// (scale 10's geolocation is 10.5 M offsets).
const KNOWN_KEYS_ROOM: usize = 12 << 20;

/// Key hashes to carry from window to window, for an APPEND table that holds no row yet and
/// whose delivery takes more than one window (see [`KnownKeys`]).
async fn known_keys(
    lake: &Lake,
    table: &Table,
    ends: &Ends,
    done: &Offsets,
    window: i64,
) -> Result<Option<KnownKeys>> {
    let first = ends.window(done, window);
    let one_window = ends.window(&done.advanced(&first), window).is_empty();
    if table.mode() != Mode::Append || one_window {
        return Ok(None);
    }
    let empty = lake.count(Layer::Silver, table.name()).await? == 0;
    // At most one key per offset of the delivery: room for them up front, so the set is not
    // copied as it grows. Offsets overstate rows where a topic's retention trimmed its start,
    // so the room is capped; past it the set grows as needed.
    let offsets: i64 = ends.iter().map(|(p, end)| end - done.next(p)).sum();
    let room = (offsets.max(0) as usize).min(KNOWN_KEYS_ROOM);
    Ok(empty.then(|| KnownKeys::empty(table.key(), room)))
}

/// The row rules of a table as SQL: each row normalised, then the first rule it fails and that
/// rule's action, and whether it is a delete.
struct RowChecks {
    columns: Vec<String>,
    failed_rule: String,
    failed_action: String,
    delete: String,
    sequence: String,
    /// Some rule has action `fail`.
    can_fail: bool,
}

impl RowChecks {
    fn of(table: &Table) -> Self {
        let rules = row_rules(table);
        let case = |value: &dyn Fn(&(String, String, Action)) -> String| {
            rules
                .iter()
                .map(|rule| format!("WHEN NOT coalesce({}, false) THEN {}", rule.1, value(rule)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Self {
            columns: table
                .columns
                .iter()
                .map(|c| normalised(table, &c.name))
                .collect(),
            failed_rule: case(&|(rule, _, _)| literal(rule)),
            failed_action: case(&|(_, _, action)| literal(action.name())),
            delete: table
                .config
                .delete_when
                .as_ref()
                .map_or_else(|| "false".to_owned(), |c| format!("coalesce(({c}), false)")),
            sequence: ident(&table.config.sequence_by),
            can_fail: rules.iter().any(|(_, _, action)| *action == Action::Fail),
        }
    }

    /// The bronze rows that `filter` selects, normalised and checked.
    fn sql(&self, filter: &str) -> String {
        format!(
            "WITH n AS (SELECT {cols}, {seq} AS _sequence, _partition, _offset FROM bronze WHERE {filter}) \
             SELECT *, CASE {rule} END AS _failed_rule, CASE {action} END AS _failed_action, \
             {delete} AS _delete FROM n",
            cols = self.columns.join(", "),
            seq = self.sequence,
            rule = self.failed_rule,
            action = self.failed_action,
            delete = self.delete,
        )
    }
}

/// Fails when a row of `checked_sql` breaks a rule whose action is `fail`, naming the rule, how
/// many rows and the first keys.
async fn stop_on_failures(ctx: &SessionContext, table: &Table, checked_sql: &str) -> Result<()> {
    let name = table.name();
    let query = query_error(name);
    let checked = ctx.sql(checked_sql).await.map_err(query)?;
    ctx.register_table("checked", checked.into_view())
        .map_err(query)?;
    let key_sql = table
        .key()
        .iter()
        .map(|k| format!("CAST({} AS VARCHAR)", ident(k)))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    let failures = collect(
        ctx,
        &format!(
            "SELECT _failed_rule, count(*) AS n, array_to_string(array_slice(array_agg({key_sql}), 1, 5), ', ') AS sample \
             FROM checked WHERE _failed_action = 'fail' GROUP BY _failed_rule ORDER BY _failed_rule"
        ),
    )
    .await
    .map_err(query)?;
    if let Some(batch) = failures.iter().find(|b| b.num_rows() > 0) {
        return Err(Error::ExpectationFailed {
            table: name.to_owned(),
            rule: batch.column(0).as_string::<i32>().value(0).to_owned(),
            count: batch.column(1).as_primitive::<Int64Type>().value(0) as u64,
            sample: batch.column(2).as_string::<i32>().value(0).to_owned(),
        });
    }
    Ok(())
}

/// Refines the bronze rows `filter` selects (one batch of a delivery) and commits them with
/// `txns`: quarantine, then dedup, enrichment and the write by mode.
#[allow(clippy::too_many_arguments)]
async fn refine_batch(
    lake: &Lake,
    project: &Project,
    table: &Table,
    ctx: &SessionContext,
    cursor: &Cursor,
    checks: &RowChecks,
    filter: &str,
    txns: Vec<(String, i64)>,
    known: Option<&mut KnownKeys>,
    stats: &mut SilverStats,
) -> Result<()> {
    let started = Instant::now();
    let name = table.name();
    let query = query_error(name);
    // Normalise and evaluate the row rules once; keep the result in memory.
    let mut checked = collect(ctx, &checks.sql(filter)).await.map_err(query)?;
    checked.retain(|b| b.num_rows() > 0);
    tracing::debug!(
        table = name,
        seconds = started.elapsed().as_secs_f64(),
        "silver: batch read and checked"
    );
    stats.rows_in += checked.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    let Some(schema) = checked.first().map(|b| b.schema()) else {
        // A window of offsets without rows (their messages went to the reject table): a later
        // window of the same partitions holds the delivery's last rows and records its end.
        return Ok(());
    };
    ctx.register_table(
        "checked",
        Arc::new(MemTable::try_new(schema, vec![checked]).map_err(query)?),
    )
    .map_err(query)?;

    // warn: count only.
    for expectation in table
        .silver_expectations()
        .filter(|e| e.action == Action::Warn)
    {
        let n = scalar_count(
            ctx,
            &format!("SELECT count(*) FROM checked WHERE _failed_rule IS NULL AND NOT coalesce({}, false)", passes(expectation)),
        )
        .await
        .map_err(query)?;
        *stats.warnings.entry(rule_name(expectation)).or_default() += n;
    }
    stats.dropped += scalar_count(
        ctx,
        "SELECT count(*) FROM checked WHERE _failed_action = 'drop'",
    )
    .await
    .map_err(query)?;

    // quarantine: exactly once, like rejects in bronze.
    let fresh = cursor.read(lake, Layer::Quarantine, name).await?.sql_past();
    let quarantined = collect(
        ctx,
        &format!(
            "SELECT * EXCLUDE (_failed_action, _delete), now() AS _quarantined_at FROM checked WHERE _failed_action = 'quarantine' AND ({fresh})"
        ),
    )
    .await
    .map_err(query)?;
    stats.quarantined += scalar_count(
        ctx,
        "SELECT count(*) FROM checked WHERE _failed_action = 'quarantine'",
    )
    .await
    .map_err(query)?;
    crate::fault::crash_point(&format!("silver-before-quarantine:{name}"));
    if quarantined.iter().any(|b| b.num_rows() > 0) {
        lake.write(
            Layer::Quarantine,
            name,
            quarantined,
            &[],
            txns.clone(),
            false,
        )
        .await?;
    }

    crate::fault::crash_point(&format!("silver-after-quarantine:{name}"));
    tracing::debug!(
        table = name,
        seconds = started.elapsed().as_secs_f64(),
        "silver: rules evaluated"
    );
    // Dedup (a hash pass in memory), then enrich.
    let valid = collect(
        ctx,
        "SELECT * EXCLUDE (_failed_rule, _failed_action) FROM checked WHERE _failed_rule IS NULL",
    )
    .await
    .map_err(query)?;
    // The checked rows are not read again: their memory goes before dedup and the write.
    ctx.deregister_table("checked").map_err(query)?;
    let latest = super::dedup::latest_per_key(&valid, table.key()).map_err(|e| query(e.into()))?;
    drop(valid);
    stats.applied += latest.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
    ctx.register_table(
        "latest",
        Arc::new(MemTable::try_new(latest[0].schema(), vec![latest]).map_err(query)?),
    )
    .map_err(query)?;
    let rows = ctx
        .sql(&enriched_sql(lake, ctx, project, table).await?)
        .await
        .map_err(query)?;
    tracing::debug!(
        table = name,
        seconds = started.elapsed().as_secs_f64(),
        "silver: deduplicated"
    );
    crate::fault::crash_point(&format!("silver-before-merge:{name}"));
    apply(lake, ctx, table, rows, txns, cursor, known).await?;
    crate::fault::crash_point(&format!("silver-after-merge:{name}"));
    tracing::debug!(
        table = name,
        seconds = started.elapsed().as_secs_f64(),
        "silver: applied"
    );
    Ok(())
}

/// The app id under which a `latest_by` table records the silver version it was built from.
fn built_from_app(table: &str) -> String {
    format!("framework-latest-by/{table}/0")
}

/// The rows of `sql`, as at least one batch (see [`collect_batches`]).
async fn collect(
    ctx: &SessionContext,
    sql: &str,
) -> deltalake::datafusion::error::Result<Vec<RecordBatch>> {
    collect_batches(ctx.sql(sql).await?).await
}

async fn scalar_count(
    ctx: &SessionContext,
    sql: &str,
) -> deltalake::datafusion::error::Result<u64> {
    let batches = collect(ctx, sql).await?;
    Ok(batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as u64
    }))
}

/// SQL for the batch's current rows (`latest`: valid rows, latest per key) with the enrichment
/// columns. A dimension joined on its own key needs no dedup (silver holds a row per key).
async fn enriched_sql(
    lake: &Lake,
    ctx: &SessionContext,
    project: &Project,
    table: &Table,
) -> Result<String> {
    let query = query_error(table.name());
    let mut select: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("d.{}", ident(&c.name)))
        .collect();
    let mut joins = String::new();
    for (i, enrich) in table.config.enrich.iter().enumerate() {
        let alias = format!("e{i}");
        let dim = format!("dim_{i}");
        if !lake
            .register(ctx, Layer::Silver, &enrich.from, &dim)
            .await?
        {
            // Not loaded yet: join an empty table of the right shape so the columns exist.
            let other = project.table(&enrich.from).expect("checked by validate");
            let mut fields = other.arrow_fields();
            fields.push(Field::new(
                "_sequence",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ));
            let empty =
                MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).map_err(query)?;
            ctx.register_table(&dim, Arc::new(empty)).map_err(query)?;
        }
        let on_cols = ident_list(enrich.on.values());
        let condition = enrich
            .on
            .iter()
            .map(|(mine, theirs)| format!("d.{} = {alias}.{}", ident(mine), ident(theirs)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let on_key = project.table(&enrich.from).is_some_and(|other| {
            let mut theirs: Vec<&String> = enrich.on.values().collect();
            let mut key: Vec<&String> = other.key().iter().collect();
            theirs.sort();
            key.sort();
            theirs == key
        });
        if on_key {
            joins.push_str(&format!(" LEFT JOIN {dim} {alias} ON {condition}"));
        } else {
            joins.push_str(&format!(
                " LEFT JOIN (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {on_cols} ORDER BY _sequence DESC) AS _rn FROM {dim}) WHERE _rn = 1) {alias} ON {condition}"
            ));
        }
        for column in &enrich.columns {
            let (source, target) = enrich_column_names(column);
            select.push(format!("{alias}.{} AS {}", ident(&source), ident(&target)));
        }
    }
    select.extend([
        "d._sequence".into(),
        "d._partition".into(),
        "d._offset".into(),
        "d._delete".into(),
    ]);
    Ok(format!("SELECT {} FROM latest d{joins}", select.join(", ")))
}

/// Applies the batch to silver by mode, recording the consumed offsets in the same commit. The
/// batch has a `_delete` column (true for a message that `delete_when` makes a delete); silver
/// does not store it.
async fn apply(
    lake: &Lake,
    ctx: &SessionContext,
    table: &Table,
    rows: DataFrame,
    txns: Vec<(String, i64)>,
    cursor: &Cursor,
    known: Option<&mut KnownKeys>,
) -> Result<()> {
    let name = table.name();
    let query = query_error(name);
    let deletes = table.config.delete_when.is_some();
    let rows = if deletes {
        remember_deletes(lake, ctx, table, rows, &txns, cursor).await?
    } else {
        rows
    };
    let existing = lake.open(Layer::Silver, name).await?;
    let stored = existing.is_some();
    if let (Mode::Append, Some(target)) = (table.mode(), &existing) {
        let new = unseen_keys(ctx, table, target, rows, known).await?;
        lake.write(Layer::Silver, name, new, &[], txns, false)
            .await?;
        return Ok(());
    }
    // A first load, or a FULL delivery, is written here; a DIFF table with rows stored goes on
    // (an APPEND table's were handled above).
    let (Some(target), Mode::Diff) = (existing, table.mode()) else {
        return write_delivery(lake, ctx, table, rows, txns, known, stored).await;
    };
    let columns: Vec<String> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|c| c != "_delete")
        .collect();
    let live = target
        .snapshot()
        .map_or_else(|_| LiveFiles::default(), LiveFiles::of);
    // Kept as batches (one empty batch when none is left): read to find the files they touch.
    let rows = collect_batches(rows).await.map_err(query)?;
    let touched = touched_files(ctx, table, &target, &rows).await?;
    let rows = ctx.read_batches(rows).map_err(query)?;
    match &touched {
        Some(touched) => hold_stored(ctx, table, &target, Some(touched)).await?,
        None => register_stored(ctx, table, &target, live).await?,
    }
    let Some(changes) = changed_rows(lake, ctx, table, rows, &columns, &txns).await? else {
        return Ok(());
    };
    if let Some(touched) = touched {
        let after = rows_after(ctx, table, &changes, &columns).await?;
        tracing::debug!(
            table = name,
            files = touched.len(),
            of = live.files,
            updated = changes.matched,
            "silver: the files holding the delivery's keys rewritten"
        );
        lake.replace_files(Layer::Silver, name, &target, &touched, after, txns)
            .await?;
        return Ok(());
    }
    if let Some(whole) = rewrite_whole(ctx, table, live, &changes, &columns).await? {
        lake.write_in_files(Layer::Silver, name, whole, txns, true)
            .await?;
        return Ok(());
    }
    merge_into(ctx, table, target, changes, &columns, txns).await
}

/// Writes a first load, or a FULL delivery, as it is: a DIFF table's rows in arrival order, in
/// files of [`crate::lake::FILE_ROWS`] rows; a FULL snapshot that equals the stored one commits
/// its offsets alone.
async fn write_delivery(
    lake: &Lake,
    ctx: &SessionContext,
    table: &Table,
    rows: DataFrame,
    txns: Vec<(String, i64)>,
    known: Option<&mut KnownKeys>,
    stored: bool,
) -> Result<()> {
    let name = table.name();
    let query = query_error(name);
    let batches = not_deleted(rows)
        .map_err(query)?
        .collect()
        .await
        .map_err(query)?;
    // Collected: the batch's deduplicated rows are not read again.
    ctx.deregister_table("latest").map_err(query)?;
    if let Some(known) = known {
        known.add(&batches).map_err(|e| query(e.into()))?;
    }
    let overwrite = table.mode() == Mode::Full;
    if overwrite && stored && same_snapshot(lake, ctx, table, &batches).await? {
        tracing::debug!(
            table = name,
            "silver: the snapshot equals the stored one; only its offsets are recorded"
        );
        // No rows: a commit of the offsets alone.
        let none = RecordBatch::new_empty(batches[0].schema());
        lake.write(Layer::Silver, name, vec![none], &[], txns, false)
            .await?;
        return Ok(());
    }
    if table.mode() == Mode::Diff {
        let batches = in_arrival_order(batches).map_err(|e| query(e.into()))?;
        lake.write_in_files(Layer::Silver, name, batches, txns, false)
            .await?;
    } else {
        lake.write(Layer::Silver, name, batches, &[], txns, overwrite)
            .await?;
    }
    Ok(())
}

/// The error of a query over `table`'s rows, for `map_err`.
fn query_error(table: &str) -> impl Fn(DataFusionError) -> Error + Copy + '_ {
    move |source| Error::Query {
        table: table.to_owned(),
        source,
    }
}

/// A delivery's rows that are not deletes, without the `_delete` column.
fn not_deleted(rows: DataFrame) -> std::result::Result<DataFrame, DataFusionError> {
    rows.filter(col("_delete").is_false())?
        .drop_columns(&["_delete"])
}

/// MERGE INTO silver of a DIFF delivery's `changes`, when neither the files holding their keys
/// nor the whole table are rewritten: a newer row (by `_sequence`, then `_offset`) updates its
/// key, or deletes it when the idcard's `delete_when` marked it; a new key is inserted.
async fn merge_into(
    ctx: &SessionContext,
    table: &Table,
    target: deltalake::DeltaTable,
    changes: Changed,
    columns: &[String],
    txns: Vec<(String, i64)>,
) -> Result<()> {
    let name = table.name();
    let query = query_error(name);
    let deletes = table.config.delete_when.is_some();
    let properties = crate::lake::writer_properties(&changes.rows);
    let changes = ctx
        .read_batches(changes.rows)
        .and_then(|rows| rows.drop_columns(&["_matched"]))
        .map_err(query)?;
    let on = key_match(table.key(), "target", "source");
    let commit = CommitProperties::default().with_application_transactions(
        txns.into_iter()
            .map(|(a, v)| Transaction::new(a, v))
            .collect(),
    );
    let delta_err = |source| Error::Delta {
        table: name.to_owned(),
        source,
    };
    let mut merge = target
        .merge(changes, on.as_str())
        .with_source_alias("source")
        .with_target_alias("target")
        .with_session_state(Arc::new(ctx.state()))
        .with_commit_properties(commit)
        .with_writer_properties(properties);
    // Newer, or as new and arrived later (a key's messages share a partition).
    let newer = "(source._sequence > target._sequence OR (source._sequence = target._sequence AND source._offset > target._offset))";
    if deletes {
        merge = merge
            .when_matched_delete(|delete| delete.predicate(format!("{newer} AND source._delete")))
            .map_err(delta_err)?;
    }
    merge = merge
        .when_matched_update(|update| {
            columns.iter().fold(
                update.predicate(format!("{newer} AND NOT source._delete")),
                |u, c| u.update(c.as_str(), format!("source.{}", ident(c))),
            )
        })
        .map_err(delta_err)?;
    merge = merge
        .when_not_matched_insert(|insert| {
            columns
                .iter()
                .fold(insert.predicate("NOT source._delete"), |i, c| {
                    i.set(c.as_str(), format!("source.{}", ident(c)))
                })
        })
        .map_err(delta_err)?;
    merge.await.map_err(delta_err)?;
    Ok(())
}

/// The rows of an APPEND batch whose key silver (the snapshot `target`) lacks (`rows` holds
/// `_delete`; deletes are left out): an anti join on the key columns against the table, not a
/// MERGE, which would read and plan every target column. With `known`, only the rows whose key
/// hash is known are joined, against the files of the windows that wrote those hashes, and the
/// new keys are remembered. No new key gives one empty batch: the commit still records the offsets.
async fn unseen_keys(
    ctx: &SessionContext,
    table: &Table,
    target: &deltalake::DeltaTable,
    rows: DataFrame,
    known: Option<&mut KnownKeys>,
) -> Result<Vec<RecordBatch>> {
    let name = table.name();
    let query = query_error(name);
    let rows = not_deleted(rows).map_err(query)?;
    // No new key writes one empty batch: a commit of the offsets alone.
    let none = RecordBatch::new_empty(Arc::new(rows.schema().as_arrow().clone()));
    let on = key_match_joinable(ctx, table, "t", "b");
    let anti_join = format!(
        "SELECT b.* FROM batch_rows b WHERE NOT EXISTS (SELECT 1 FROM target t WHERE {on})"
    );
    let mut new = match known {
        Some(known) => unseen_by_hash(ctx, name, target, rows, known, &anti_join).await?,
        None => {
            Lake::register_files(ctx, Layer::Silver, name, "target", target, None, None).await?;
            ctx.register_table("batch_rows", rows.into_view())
                .map_err(query)?;
            collect(ctx, &anti_join).await.map_err(query)?
        }
    };
    new.retain(|b| b.num_rows() > 0);
    if new.is_empty() {
        new.push(none);
    }
    Ok(new)
}

/// [`unseen_keys`] with the hashes of the keys this run wrote: rows of an unknown hash are new;
/// the others run `anti_join` against the files of the windows that wrote their hashes.
async fn unseen_by_hash(
    ctx: &SessionContext,
    name: &str,
    target: &deltalake::DeltaTable,
    rows: DataFrame,
    known: &mut KnownKeys,
    anti_join: &str,
) -> Result<Vec<RecordBatch>> {
    let query = query_error(name);
    let started = Instant::now();
    known.note_files(
        Lake::live_files(target)
            .iter()
            .map(|(path, _)| path.as_str()),
    );
    let rows = rows.collect().await.map_err(query)?;
    // The fresh rows' keys are remembered by the split; the joined ones once they are new.
    let split = known.split(&rows).map_err(|e| query(e.into()))?;
    drop(rows);
    let files = known.files_to_check(&split);
    let mut new = split.fresh;
    let fresh = new.iter().map(RecordBatch::num_rows).sum::<usize>();
    let maybe = split.maybe_stored;
    let maybe_rows = maybe.iter().map(RecordBatch::num_rows).sum::<usize>();
    // No file of the windows that wrote their hashes: those keys are not stored.
    let joined = match (&files, maybe.first()) {
        (_, None) => Vec::new(),
        (Some(paths), Some(_)) if paths.is_empty() => maybe,
        (files, Some(first)) => {
            Lake::register_files(
                ctx,
                Layer::Silver,
                name,
                "target",
                target,
                files.as_deref(),
                None,
            )
            .await?;
            let batch_rows = MemTable::try_new(first.schema(), vec![maybe]).map_err(query)?;
            ctx.register_table("batch_rows", Arc::new(batch_rows))
                .map_err(query)?;
            collect(ctx, anti_join).await.map_err(query)?
        }
    };
    known.add(&joined).map_err(|e| query(e.into()))?;
    new.extend(joined);
    tracing::debug!(
        table = name,
        fresh,
        maybe_stored = maybe_rows,
        files_read = files
            .as_ref()
            .map_or_else(|| "all".to_owned(), |f| f.len().to_string()),
        known = known.len(),
        seconds = started.elapsed().as_secs_f64(),
        "silver: keys new by their hash, the rest joined"
    );
    Ok(new)
}

/// The rows of a DIFF batch that change stored keys, and the new keys beside them.
struct Changed {
    /// The batch's columns, `_delete`, and `_matched` (the key is stored).
    rows: Vec<RecordBatch>,
    /// Rows whose key is stored: updates and deletes.
    matched: usize,
}

/// A MERGE rewrites each target file that holds a changed key, and keys spread over the files
/// at random: `n` changed keys leave a file of `f` untouched with probability about e^(-n/f),
/// so from this many changes per file on (5% untouched) it rewrites nearly every file anyway.
const CHANGES_PER_FILE_TO_REWRITE: u64 = 3;

/// Stored rows up to which such a table is rewritten whole in memory; a larger one is merged.
const REWRITE_ROWS_MAX: u64 = 2_000_000;

/// Silver after the batch's changes, for a table the MERGE would rewrite nearly whole anyway
/// (see [`CHANGES_PER_FILE_TO_REWRITE`]): the stored rows whose key the batch does not update
/// or delete, and the batch's rows that are not deletes, to replace the table in one overwrite
/// commit. Cheaper than the MERGE it stands for: the stored rows are read once and written once,
/// with no join over every target column. `None` when the MERGE should run.
async fn rewrite_whole(
    ctx: &SessionContext,
    table: &Table,
    live: LiveFiles,
    changes: &Changed,
    columns: &[String],
) -> Result<Option<Vec<RecordBatch>>> {
    let name = table.name();
    if !small_enough_to_rewrite(live)
        || (changes.matched as u64) < CHANGES_PER_FILE_TO_REWRITE * live.files
    {
        return Ok(None);
    }
    let whole = rows_after(ctx, table, changes, columns).await?;
    tracing::debug!(
        table = name,
        files = live.files,
        updated = changes.matched,
        "silver: rewritten whole instead of merged"
    );
    Ok(Some(whole))
}

/// The rows of `stored` after the batch's changes: the stored rows whose key the batch does not
/// update or delete, then the batch's rows that are not deletes.
async fn rows_after(
    ctx: &SessionContext,
    table: &Table,
    changes: &Changed,
    columns: &[String],
) -> Result<Vec<RecordBatch>> {
    let query = query_error(table.name());
    let schema = changes.rows[0].schema();
    ctx.register_table(
        "changes",
        Arc::new(MemTable::try_new(schema, vec![changes.rows.clone()]).map_err(query)?),
    )
    .map_err(query)?;
    let list = ident_list(columns);
    let on = key_match(table.key(), "t", "c");
    collect(
        ctx,
        &format!(
            "SELECT {list} FROM stored t \
             WHERE NOT EXISTS (SELECT 1 FROM changes c WHERE c._matched AND {on}) \
             UNION ALL SELECT {list} FROM changes WHERE NOT _delete"
        ),
    )
    .await
    .map_err(query)
}

/// `batches` as one batch in arrival order: by bronze offset, then partition (the partitions
/// advance together). A DIFF table is stored so, in files of [`crate::lake::FILE_ROWS`] rows,
/// for [`touched_files`]; dedup and the join before leave its rows in runs of arrival order
/// from each partition, which put the oldest rows of each table in two or three of its five to
/// seven files at scale 1 instead of the first.
fn in_arrival_order(
    batches: Vec<RecordBatch>,
) -> std::result::Result<Vec<RecordBatch>, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::compute::{
        SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
    };
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let (Ok(offset), Ok(partition)) = (
        first.schema().index_of(OFFSET),
        first.schema().index_of(PARTITION),
    ) else {
        return Ok(batches);
    };
    let all = concat_batches(&first.schema(), &batches)?;
    drop(batches);
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: all.column(offset).clone(),
                options: None,
            },
            SortColumn {
                values: all.column(partition).clone(),
                options: None,
            },
        ],
        None,
    )?;
    Ok(vec![take_record_batch(&all, &order)?])
}

/// The column that names each stored row's file while [`touched_files`] looks for them.
const FILE_COLUMN: &str = "_silver_file";

/// The live files of silver that hold a key of the delivery's `rows`, when they are fewer than
/// all and together small enough to rewrite in memory ([`REWRITE_ROWS_MAX`]); `None` when the
/// table is to be read whole: one file, a delivery of half the table's rows or more (it touches
/// nearly every file), or a file the scan names that the log does not hold. Silver's DIFF tables
/// are stored in files of [`crate::lake::FILE_ROWS`] rows in arrival order, so the rows a
/// delivery updates sit in a few files when updates follow arrival (recent rows change, or the
/// oldest). Reads only the key columns.
async fn touched_files(
    ctx: &SessionContext,
    table: &Table,
    target: &deltalake::DeltaTable,
    rows: &[RecordBatch],
) -> Result<Option<Vec<String>>> {
    let name = table.name();
    let query = query_error(name);
    let live = Lake::live_files(target);
    let stored: Option<usize> = live.iter().map(|(_, rows)| *rows).sum();
    let delivered: usize = rows.iter().map(RecordBatch::num_rows).sum();
    let (Some(stored), Some(first)) = (stored, rows.first()) else {
        return Ok(None);
    };
    if live.len() < 2 || delivered * 2 > stored {
        return Ok(None);
    }
    let started = Instant::now();
    Lake::register_files(
        ctx,
        Layer::Silver,
        name,
        "keyed",
        target,
        None,
        Some(FILE_COLUMN),
    )
    .await?;
    let delivery = MemTable::try_new(first.schema(), vec![rows.to_vec()]).map_err(query)?;
    ctx.register_table("delivery", Arc::new(delivery))
        .map_err(query)?;
    let on = key_match(table.key(), "k", "d");
    let found = collect(
        ctx,
        &format!(
            "SELECT DISTINCT CAST(k.{file} AS VARCHAR) AS file FROM keyed k \
             WHERE EXISTS (SELECT 1 FROM delivery d WHERE {on})",
            file = ident(FILE_COLUMN)
        ),
    )
    .await
    .map_err(query)?;
    for relation in ["keyed", "delivery"] {
        ctx.deregister_table(relation).map_err(query)?;
    }
    let paths: Vec<String> = live.iter().map(|(path, _)| path.clone()).collect();
    let mut touched = Vec::new();
    for batch in &found {
        let column = deltalake::arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .map_err(|e| query(e.into()))?;
        for scanned in column.as_string::<i32>().iter().flatten() {
            let Some(path) = crate::lake::file_of(scanned, &paths) else {
                return Ok(None);
            };
            touched.push(path.clone());
        }
    }
    let touched_rows: usize = live
        .iter()
        .filter(|(path, _)| touched.contains(path))
        .filter_map(|(_, rows)| *rows)
        .sum();
    tracing::debug!(
        table = name,
        files = touched.len(),
        of = live.len(),
        seconds = started.elapsed().as_secs_f64(),
        "silver: files holding the delivery's keys found"
    );
    if touched.len() == live.len() || touched_rows as u64 > REWRITE_ROWS_MAX {
        return Ok(None);
    }
    Ok(Some(touched))
}

/// Registers the files `paths` of silver's snapshot `target` (all when `None`) as `stored`,
/// read into memory: [`changed_rows`] and [`rows_after`] both read every row.
async fn hold_stored(
    ctx: &SessionContext,
    table: &Table,
    target: &deltalake::DeltaTable,
    paths: Option<&[String]>,
) -> Result<()> {
    let name = table.name();
    let query = query_error(name);
    Lake::register_files(ctx, Layer::Silver, name, "stored", target, paths, None).await?;
    let held = collect(ctx, "SELECT * FROM stored").await.map_err(query)?;
    ctx.deregister_table("stored").map_err(query)?;
    let held = MemTable::try_new(held[0].schema(), vec![held]).map_err(query)?;
    ctx.register_table("stored", Arc::new(held))
        .map_err(query)?;
    Ok(())
}

/// Whether a table of `live` files is stored and small enough to be rewritten whole in memory.
fn small_enough_to_rewrite(live: LiveFiles) -> bool {
    live.files > 0 && live.rows.is_some_and(|rows| rows <= REWRITE_ROWS_MAX)
}

/// Registers silver's rows (of `live` files) as `stored`: read into memory once when the table
/// may be rewritten whole ([`REWRITE_ROWS_MAX`] rows at most), since [`changed_rows`] and
/// [`rewrite_whole`] then both read every row; a larger table stays in the lake, streamed.
/// The 1% delivery at scale 1 (seven such tables) ran 8.72 G instructions against 9.20 G
/// (callgrind), for 50-80 MiB more at its peak.
async fn register_stored(
    ctx: &SessionContext,
    table: &Table,
    target: &deltalake::DeltaTable,
    live: LiveFiles,
) -> Result<()> {
    if small_enough_to_rewrite(live) {
        return hold_stored(ctx, table, target, None).await;
    }
    Lake::register_files(
        ctx,
        Layer::Silver,
        table.name(),
        "stored",
        target,
        None,
        None,
    )
    .await?;
    Ok(())
}

/// The rows of a DIFF batch that change silver: keys it lacks (unless deleted), and keys whose
/// row is newer than the stored one and differs from it in a column or deletes it. An unchanged
/// re-delivery leaves the stored row, its `_sequence` included, as it is (the usual "update only
/// when changed" MERGE). When no stored key changes, the new keys are appended with the batch's
/// offsets here and `None` is returned; otherwise the changes, for MERGE (which reads and
/// rewrites target files only then).
async fn changed_rows(
    lake: &Lake,
    ctx: &SessionContext,
    table: &Table,
    rows: DataFrame,
    columns: &[String],
    txns: &[(String, i64)],
) -> Result<Option<Changed>> {
    let name = table.name();
    let query = query_error(name);
    ctx.register_table("batch_rows", rows.into_view())
        .map_err(query)?;
    let same = same_row(table, columns);
    let newer =
        "(b._sequence > t._sequence OR (b._sequence = t._sequence AND b._offset > t._offset))";
    let on = key_match(table.key(), "t", "b");
    let changes = collect(
        ctx,
        &format!(
            "SELECT b.*, t._hit IS NOT NULL AS _matched FROM batch_rows b \
             LEFT JOIN (SELECT *, true AS _hit FROM stored) t ON {on} \
             WHERE (t._hit IS NULL AND NOT b._delete) \
             OR (t._hit IS NOT NULL AND {newer} AND (b._delete OR NOT ({same})))"
        ),
    )
    .await
    .map_err(query)?;
    let matched = changes
        .iter()
        .map(|b| {
            b.column_by_name("_matched")
                .map_or(0, |c| c.as_boolean().true_count())
        })
        .sum::<usize>();
    if matched > 0 {
        return Ok(Some(Changed {
            rows: changes,
            matched,
        }));
    }
    let new = ctx
        .read_batches(changes)
        .map_err(query)?
        .drop_columns(&["_matched", "_delete"])
        .map_err(query)?
        .collect()
        .await
        .map_err(query)?;
    let new = in_arrival_order(new).map_err(|e| query(e.into()))?;
    lake.write_in_files(Layer::Silver, name, new, txns.to_vec(), false)
        .await?;
    Ok(None)
}

/// SQL that a batch row `b` and a stored row `t` hold the same values: every column of
/// `columns` but the message's sequence and position, a randomized PII column by plaintext.
fn same_row(table: &Table, columns: &[String]) -> String {
    columns
        .iter()
        .filter(|c| !matches!(c.as_str(), "_sequence" | PARTITION | OFFSET))
        .map(|c| {
            let id = ident(c);
            if randomized(table, c) {
                format!("pii_same(b.{id}, t.{id})")
            } else {
                format!("(b.{id} IS NOT DISTINCT FROM t.{id})")
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Whether a FULL delivery's rows (`batches`: one per key, no deletes) are the stored
/// snapshot's, row for row by [`same_row`]. Replacing the table then would write the same rows
/// again and make every gold model that reads it rebuild (a dimension delivered whole each day
/// is usually unchanged). A table whose columns differ (its idcard changed) is not the same.
async fn same_snapshot(
    lake: &Lake,
    ctx: &SessionContext,
    table: &Table,
    batches: &[RecordBatch],
) -> Result<bool> {
    let name = table.name();
    let query = query_error(name);
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Ok(false);
    };
    if !lake
        .register(ctx, Layer::Silver, name, "full_stored")
        .await?
    {
        return Ok(false);
    }
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let stored = ctx.table("full_stored").await.map_err(query)?;
    let stored = stored.schema().as_arrow();
    // Same names and types: the comparison below casts `1` and `'1'` alike, so a column whose
    // type the idcard changed would pass for unchanged and the table keep its old type.
    let alike = stored.fields().len() == schema.fields().len()
        && schema.fields().iter().all(|field| {
            stored
                .field_with_name(field.name())
                .is_ok_and(|s| same_type(s.data_type(), field.data_type()))
        });
    if !alike {
        return Ok(false);
    }
    // A snapshot of another size differs without a join.
    let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
    let stored_rows = scalar_count(ctx, "SELECT count(*) FROM full_stored")
        .await
        .map_err(query)?;
    if stored_rows != rows {
        return Ok(false);
    }
    let snapshot = MemTable::try_new(schema, vec![batches.to_vec()]).map_err(query)?;
    ctx.register_table("full_snapshot", Arc::new(snapshot))
        .map_err(query)?;
    let on = key_match(table.key(), "t", "b");
    let same = same_row(table, &columns);
    let matched = scalar_count(
        ctx,
        &format!("SELECT count(*) FROM full_snapshot b JOIN full_stored t ON {on} WHERE {same}"),
    )
    .await
    .map_err(query)?;
    Ok(matched == rows)
}

/// Whether two Arrow types store the same Delta type: equal, or both strings or both binary
/// in any of Arrow's layouts (a scan may give views where a batch holds plain arrays).
fn same_type(a: &DataType, b: &DataType) -> bool {
    let string =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let binary = |t: &DataType| {
        matches!(
            t,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        )
    };
    a == b || (string(a) && string(b)) || (binary(a) && binary(b))
}

/// Whether `column` is a top-level string column encrypted in randomized mode (its ciphertext
/// differs at every encryption of one plaintext).
fn randomized(table: &Table, column: &str) -> bool {
    table
        .column(column)
        .and_then(|c| c.pii.as_ref())
        .is_some_and(|p| p.mode == crate::pii::PiiMode::Randomized)
}

/// DIFF with `delete_when`: records the batch's deletes in `silver/<table>__tombstones` (exactly
/// once: the commit carries the batch's offsets, as quarantine's does), then leaves out the
/// batch rows that a stored delete of their key supersedes (older, or as old and earlier), so a
/// version arriving after its key was deleted is not inserted again.
async fn remember_deletes(
    lake: &Lake,
    ctx: &SessionContext,
    table: &Table,
    rows: DataFrame,
    txns: &[(String, i64)],
    cursor: &Cursor,
) -> Result<DataFrame> {
    let name = table.name();
    let query = query_error(name);
    let tombstones = format!("{name}__tombstones");
    ctx.register_table("batch", rows.into_view())
        .map_err(query)?;
    let keys: Vec<String> = table.key().iter().map(|k| ident(k)).collect();
    let keys = keys.join(", ");
    let fresh = cursor
        .read(lake, Layer::Silver, &tombstones)
        .await?
        .sql_past();
    let new = collect(
        ctx,
        &format!(
            "SELECT {keys}, _sequence, {PARTITION}, {OFFSET} FROM batch WHERE _delete AND ({fresh})"
        ),
    )
    .await
    .map_err(query)?;
    if new.iter().any(|b| b.num_rows() > 0) {
        lake.write(Layer::Silver, &tombstones, new, &[], txns.to_vec(), false)
            .await?;
    }
    if !lake
        .register(ctx, Layer::Silver, &tombstones, "tombstones")
        .await?
    {
        return ctx.table("batch").await.map_err(query);
    }
    let on = key_match(table.key(), "b", "t");
    ctx.sql(&format!(
        "SELECT b.* FROM batch b LEFT JOIN (SELECT * FROM (SELECT *, row_number() OVER \
         (PARTITION BY {keys} ORDER BY _sequence DESC, _offset DESC) AS _rn FROM tombstones) \
         WHERE _rn = 1) t ON {on} \
         WHERE t._offset IS NULL OR b._sequence > t._sequence \
         OR (b._sequence = t._sequence AND b._offset >= t._offset)"
    ))
    .await
    .map_err(query)
}

/// Brings each `latest_by` table of `table` up to the current silver version. Each rebuild
/// records the silver version it was made from (a txn action), so one that a crash left behind
/// the silver commit is redone by the next run, even when that run finds no new rows.
async fn refresh_latest_by(lake: &Lake, table: &Table) -> Result<()> {
    if table.config.latest_by.is_empty() {
        return Ok(());
    }
    let Some(silver) = lake.open(Layer::Silver, table.name()).await? else {
        return Ok(());
    };
    let version = silver.version().unwrap_or(0) as i64;
    let app = built_from_app(table.name());
    for latest in &table.config.latest_by {
        let built = lake
            .txn_versions(Layer::Silver, &latest.name, std::slice::from_ref(&app))
            .await?;
        // Current when built from this version, or from an older one whose later commits
        // only recorded offsets (an unchanged re-delivery).
        if let Some(&from) = built.get(&app)
            && !lake
                .data_changed(Layer::Silver, table.name(), from, version)
                .await?
        {
            continue;
        }
        crate::fault::crash_point(&format!("silver-before-latest-by:{}", table.name()));
        rebuild_latest_by(lake, table, latest, (app.clone(), version)).await?;
    }
    Ok(())
}

/// `<lake>/silver/<name>`: the latest silver row of `table` per `key`, recording `built_from`.
async fn rebuild_latest_by(
    lake: &Lake,
    table: &Table,
    latest: &crate::idcard::config::LatestByConfig,
    built_from: (String, i64),
) -> Result<()> {
    let query = query_error(table.name());
    let started = Instant::now();
    let ctx = session();
    lake.register(&ctx, Layer::Silver, table.name(), "s")
        .await?;
    let rows = collect(&ctx, "SELECT * FROM s").await.map_err(query)?;
    let read_s = started.elapsed().as_secs_f64();
    // The same hash pass as the batch dedup, keyed by `latest.key`.
    let batches = super::dedup::latest_per_key(&rows, &latest.key).map_err(|e| query(e.into()))?;
    drop(rows);
    let dedup_s = started.elapsed().as_secs_f64() - read_s;
    let written: usize = batches.iter().map(RecordBatch::num_rows).sum();
    lake.write(
        Layer::Silver,
        &latest.name,
        batches,
        &[],
        vec![built_from],
        true,
    )
    .await?;
    tracing::debug!(
        table = latest.name,
        rows = written,
        read_s,
        dedup_s,
        seconds = started.elapsed().as_secs_f64(),
        "silver: latest_by table rebuilt"
    );
    Ok(())
}
