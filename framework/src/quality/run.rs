//! Runs checks against the lake and records the results; a check never changes the table it reads.

use std::collections::BTreeSet;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::datafusion::catalog::MemorySchemaProvider;
use deltalake::datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};

use crate::idcard::Action;
use crate::idcard::config::{ExpectationConfig, Range};
use crate::lake::{Lake, Layer, NullCounts, session};
use crate::silver::sql::{ident, ident_list, passes};

use super::compile::{Check, Rule};
use super::config::SuiteLayer;
use super::{Error, Result};

/// Keys shown per failing check.
const SAMPLE: usize = 5;

/// Checks evaluated at once.
const CONCURRENT_CHECKS: usize = 4;

/// The outcome of one check in one run: a row of `<lake>/quality/results`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub run_id: String,
    pub suite: String,
    pub check: String,
    pub expectation: String,
    pub layer: SuiteLayer,
    pub table: Option<String>,
    pub column: Option<String>,
    pub action: Action,
    pub passed: bool,
    pub observed_value: String,
    pub failing_rows: u64,
    pub failing_keys: Vec<String>,
}

impl CheckResult {
    /// Whether this result stops a run.
    pub fn is_fatal(&self) -> bool {
        !self.passed && self.action == Action::Fail
    }
}

/// Runs `checks` and appends their results to `<lake>/quality/results`; does not fail on a
/// failed check (the caller decides, see [`CheckResult::is_fatal`]).
pub async fn run_checks(lake: &Lake, checks: &[&Check], run_id: &str) -> Result<Vec<CheckResult>> {
    let results = evaluate_checks(lake, checks, run_id).await?;
    record_results(lake, &results).await?;
    Ok(results)
}

/// Runs `checks` without recording their results (see [`record_results`]).
pub async fn evaluate_checks(
    lake: &Lake,
    checks: &[&Check],
    run_id: &str,
) -> Result<Vec<CheckResult>> {
    let ctx = session();
    let statistics = register(lake, &ctx, checks).await?;
    let mut counted = counted_by_statistics(checks, &statistics);
    let to_scan: Vec<(usize, &Check)> = checks
        .iter()
        .enumerate()
        .filter(|(i, _)| !counted.contains_key(i))
        .map(|(i, c)| (i, *c))
        .collect();
    counted.extend(shared_scans(&ctx, &to_scan).await);
    // Each check is a small query: planning, a scan and a few rows out. Several at a time, each
    // counted on a task of its own (`collect_apart`), keep both cores busy (the results keep
    // the checks' order).
    // Collected first: a lazy `map` closure here makes the future unsendable to a spawned task
    // (rustc's higher-ranked lifetime limitation).
    let pending: Vec<_> = checks
        .iter()
        .enumerate()
        .map(|(i, c)| evaluate(lake, &ctx, c, counted.get(&i).copied()))
        .collect();
    let outcomes: Vec<Outcome> = futures::stream::iter(pending)
        .buffered(CONCURRENT_CHECKS)
        .try_collect()
        .await?;
    let mut results = Vec::new();
    for (check, outcome) in checks.iter().zip(outcomes) {
        let result = CheckResult {
            run_id: run_id.to_owned(),
            suite: check.suite.clone(),
            check: check.name.clone(),
            expectation: check.expectation.name(),
            layer: check.layer,
            table: check.table.clone(),
            column: check.column.clone(),
            action: check.action,
            passed: outcome.failing == 0,
            observed_value: outcome.observed,
            failing_rows: outcome.failing,
            failing_keys: outcome.sample,
        };
        results.push(result);
    }
    Ok(results)
}

/// The quality layer's table of check results.
pub const RESULTS_TABLE: &str = "results";

/// Appends `results` to `<lake>/quality/results` in one commit.
pub async fn record_results(lake: &Lake, results: &[CheckResult]) -> Result<()> {
    if !results.is_empty() {
        lake.write(
            Layer::Quality,
            RESULTS_TABLE,
            vec![results_batch(results)?],
            &[],
            vec![],
            false,
        )
        .await?;
    }
    Ok(())
}

/// A run id: UTC time and a random suffix.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u16>()
    )
}

/// Registers every table the checks read, by its relation (`silver.orders`, `gold.x`, ...), and
/// returns what each one's file statistics count.
async fn register(
    lake: &Lake,
    ctx: &SessionContext,
    checks: &[&Check],
) -> Result<std::collections::HashMap<String, NullCounts>> {
    let mut statistics = std::collections::HashMap::new();
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    let relations: BTreeSet<(String, String)> = checks.iter().flat_map(|c| c.relations()).collect();
    for (schema, table) in relations {
        if catalog.schema(&schema).is_none() {
            catalog
                .register_schema(&schema, Arc::new(MemorySchemaProvider::new()))
                .map_err(|source| Error::Query {
                    check: String::new(),
                    source,
                })?;
        }
        if let Some(layer) = layer_of(&schema) {
            // A missing table is reported by the check that reads it.
            let relation = format!("{schema}.{table}");
            let not_null: Vec<&str> = checks
                .iter()
                .filter(|c| c.relation.as_deref() == Some(relation.as_str()))
                .filter_map(|c| match &c.rule {
                    Rule::NotNull { column } => Some(column.as_str()),
                    _ => None,
                })
                .collect();
            if let Some(Some(counts)) = lake
                .register_counted(ctx, layer, &table, &relation, &not_null)
                .await?
            {
                statistics.insert(relation, counts);
            }
        }
    }
    Ok(statistics)
}

/// Failing and total rows of the checks (by index in `checks`) that the tables' file
/// statistics answer exactly, without a scan: nulls in a column, and row counts.
fn counted_by_statistics(
    checks: &[&Check],
    statistics: &std::collections::HashMap<String, NullCounts>,
) -> std::collections::HashMap<usize, (u64, u64)> {
    checks
        .iter()
        .enumerate()
        .filter_map(|(i, check)| {
            let counts = statistics.get(check.relation.as_deref()?)?;
            let failing = match &check.rule {
                Rule::NotNull { column } => *counts.nulls.get(column)?,
                Rule::RowCount { .. } => 0,
                _ => return None,
            };
            Some((i, (failing, counts.rows)))
        })
        .collect()
}

/// Splits `checks` into those whose tables all exist in the lake and those reading a table not
/// loaded yet; each table's log is opened once.
pub async fn runnable<'a>(
    lake: &Lake,
    checks: &[&'a Check],
) -> Result<(Vec<&'a Check>, Vec<&'a Check>)> {
    let mut missing = BTreeSet::new();
    let relations: BTreeSet<(String, String)> = checks.iter().flat_map(|c| c.relations()).collect();
    for (schema, table) in relations {
        if let Some(layer) = layer_of(&schema)
            && lake.open(layer, &table).await?.is_none()
        {
            missing.insert((schema, table));
        }
    }
    Ok(checks
        .iter()
        .partition(|c| c.relations().iter().all(|r| !missing.contains(r))))
}

fn layer_of(schema: &str) -> Option<Layer> {
    Some(match schema {
        "bronze" => Layer::Bronze,
        "silver" => Layer::Silver,
        "gold" => Layer::Gold,
        "reject" => Layer::Reject,
        "quarantine" => Layer::Quarantine,
        _ => return None,
    })
}

/// What a check saw.
struct Outcome {
    failing: u64,
    observed: String,
    sample: Vec<String>,
}

/// Failing and total rows of the checks (by index in `checks`) whose row rule a scan shared
/// with other checks of the same table counted: one query per table instead of one per check
/// (each query plans, opens the table's files and scans). A table with one such check, or
/// whose shared query fails (e.g. a column it lacks), is left to the checks' own queries,
/// which report their own errors.
async fn shared_scans(
    ctx: &SessionContext,
    checks: &[(usize, &Check)],
) -> std::collections::HashMap<usize, (u64, u64)> {
    let mut by_relation: std::collections::BTreeMap<&str, Vec<(usize, String)>> =
        Default::default();
    for &(i, check) in checks {
        if let (Some(relation), Some(failed)) = (&check.relation, row_predicate(&check.rule)) {
            by_relation
                .entry(relation.as_str())
                .or_default()
                .push((i, failed));
        }
    }
    let mut counted = std::collections::HashMap::new();
    for (relation, group) in by_relation {
        if group.len() < 2 || !ctx.table_exist(relation).unwrap_or(false) {
            continue;
        }
        let counts: Vec<String> = group
            .iter()
            .map(|(_, failed)| format!("count(*) FILTER (WHERE {failed})"))
            .collect();
        let started = std::time::Instant::now();
        let sql = format!("SELECT count(*), {} FROM {relation}", counts.join(", "));
        let batches = async { ctx.sql(&sql).await?.collect().await }.await;
        let Ok(batches) = batches else {
            continue;
        };
        tracing::debug!(
            relation,
            checks = group.len(),
            seconds = started.elapsed().as_secs_f64(),
            "quality: checks counted in one scan"
        );
        let total = int_cell(&batches, 0);
        for (at, (i, _)) in group.iter().enumerate() {
            counted.insert(*i, (int_cell(&batches, at + 1), total));
        }
    }
    counted
}

/// Evaluates one check; `counted` holds its failing and total rows when a shared scan counted
/// them ([`shared_scans`]).
async fn evaluate(
    lake: &Lake,
    ctx: &SessionContext,
    check: &Check,
    counted: Option<(u64, u64)>,
) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let outcome = evaluate_rule(lake, ctx, check, counted).await;
    tracing::debug!(
        check = check.name,
        seconds = started.elapsed().as_secs_f64(),
        "quality: check evaluated"
    );
    outcome
}

async fn evaluate_rule(
    lake: &Lake,
    ctx: &SessionContext,
    check: &Check,
    counted: Option<(u64, u64)>,
) -> Result<Outcome> {
    let query = |source| Error::Query {
        check: check.name.clone(),
        source,
    };
    let mut outcome = Outcome {
        failing: 0,
        observed: String::new(),
        sample: Vec::new(),
    };
    for (schema, table) in check.relations() {
        let relation = format!("{schema}.{table}");
        if !ctx.table_exist(relation.as_str()).map_err(query)? {
            outcome.failing = 1;
            outcome.observed = format!("table {relation} does not exist");
            return Ok(outcome);
        }
    }
    let relation = check.relation.clone().unwrap_or_default();
    match &check.rule {
        Rule::ColumnsPresent { columns, exact } => {
            let frame = ctx.table(relation.as_str()).await.map_err(query)?;
            let present: BTreeSet<String> = frame
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let wanted: BTreeSet<String> = columns.iter().cloned().collect();
            let missing: Vec<&String> = wanted.difference(&present).collect();
            let extra: Vec<&String> = if *exact {
                present.difference(&wanted).collect()
            } else {
                Vec::new()
            };
            outcome.failing = (missing.len() + extra.len()) as u64;
            outcome.observed = format!("missing: {missing:?}, unexpected: {extra:?}");
            outcome.sample = missing.iter().chain(&extra).map(|s| (*s).clone()).collect();
        }
        Rule::RowCount { min, max } => {
            let n = match counted {
                Some((_, rows)) => rows,
                None => count(ctx, &format!("SELECT count(*) FROM {relation}"))
                    .await
                    .map_err(query)?,
            };
            let ok = min.is_none_or(|m| n as f64 >= m) && max.is_none_or(|m| n as f64 <= m);
            outcome.failing = u64::from(!ok);
            outcome.observed = format!("{n} rows");
        }
        Rule::Fresh { max_age_hours } => {
            let layer = layer_of(check.layer.name()).expect("a suite layer is a lake layer");
            let table = check.table.as_deref().unwrap_or_default();
            let age = lake.age_hours(layer, table).await?;
            match age {
                Some(age) => {
                    outcome.failing = u64::from(age > *max_age_hours);
                    outcome.observed = format!("last written {age:.2} h ago");
                }
                None => {
                    outcome.failing = 1;
                    outcome.observed = "never written".into();
                }
            }
        }
        Rule::NoRows { query: sql } => {
            // A check reads: no DDL, no DML (`COPY ... TO` wrote a file), no SET.
            let read_only = deltalake::datafusion::execution::context::SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let frame = ctx.sql_with_options(sql, read_only).await.map_err(query)?;
            let batches = crate::lake::collect_apart(frame).await.map_err(query)?;
            outcome.failing = batches.iter().map(|b| b.num_rows() as u64).sum();
            outcome.sample = rows_as_text(&batches, SAMPLE);
            outcome.observed = format!("{} row(s) returned", outcome.failing);
        }
        rule => {
            let flagged = flagged_sql(&relation, rule);
            let (n, total) = match counted {
                Some(counted) => counted,
                None => {
                    let frame = ctx
                        .sql(&counting_sql(&relation, rule, &flagged))
                        .await
                        .map_err(query)?;
                    let batches = crate::lake::collect_apart(frame).await.map_err(query)?;
                    (int_cell(&batches, 0), int_cell(&batches, 1))
                }
            };
            outcome.failing = n;
            outcome.observed = format!("{n} of {total} rows fail");
            if n > 0 {
                let keys = if check.keys.is_empty() {
                    rule.columns().to_vec()
                } else {
                    check.keys.clone()
                };
                let key_sql = keys
                    .iter()
                    .map(|k| format!("CAST({} AS VARCHAR)", ident(k)))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let batches = ctx
                    .sql(&format!(
                        "SELECT {key_sql} AS k FROM ({flagged}) WHERE _failed LIMIT {SAMPLE}"
                    ))
                    .await
                    .map_err(query)?
                    .collect()
                    .await
                    .map_err(query)?;
                outcome.sample = rows_as_text(&batches, SAMPLE);
            }
        }
    }
    Ok(outcome)
}

/// One query giving the failing rows and all rows of a row-level rule. Uniqueness is counted by
/// a hash aggregate on the rule's columns only (the rows whose values occur more than once);
/// the window of [`flagged_sql`] would sort the whole table with every column (at scale 1 the
/// silver suite took 0.65 s that way). Other rules: one scan of [`flagged_sql`].
fn counting_sql(relation: &str, rule: &Rule, flagged: &str) -> String {
    match rule {
        Rule::Unique { columns } => {
            let cols = ident_list(columns);
            format!(
                "SELECT CAST(coalesce(sum(_n), 0) AS BIGINT), (SELECT count(*) FROM {relation}) \
                 FROM (SELECT count(*) AS _n FROM {relation} GROUP BY {cols} HAVING count(*) > 1)"
            )
        }
        _ => format!("SELECT count(*) FILTER (WHERE _failed), count(*) FROM ({flagged})"),
    }
}

/// Whether a row fails a rule that looks at that row alone (not null, between, in a set, a
/// pattern), as SQL over the row's columns; `None` for the other rules.
fn row_predicate(rule: &Rule) -> Option<String> {
    let predicate = |e: ExpectationConfig| format!("NOT coalesce({}, false)", passes(&e));
    let base = |column: &str| ExpectationConfig {
        name: None,
        column: column.to_owned(),
        not_null: None,
        in_set: None,
        between: None,
        matches: None,
        action: Action::Warn,
    };
    let failed = match rule {
        Rule::NotNull { column } => predicate(ExpectationConfig {
            not_null: Some(true),
            ..base(column)
        }),
        Rule::Between { column, min, max } => predicate(ExpectationConfig {
            between: Some(Range {
                min: *min,
                max: *max,
            }),
            ..base(column)
        }),
        Rule::InSet { column, values } => predicate(ExpectationConfig {
            in_set: Some(values.clone()),
            ..base(column)
        }),
        Rule::Regex { column, pattern } => predicate(ExpectationConfig {
            matches: Some(pattern.clone()),
            ..base(column)
        }),
        _ => return None,
    };
    Some(failed)
}

/// `SELECT *, <failed> AS _failed FROM relation` for a row-level rule (for uniqueness, also
/// what the failing keys are sampled from: slow, but only when some fail).
fn flagged_sql(relation: &str, rule: &Rule) -> String {
    if let Some(failed) = row_predicate(rule) {
        return format!("SELECT *, {failed} AS _failed FROM {relation}");
    }
    let failed = match rule {
        Rule::Unique { columns } => {
            let cols = ident_list(columns);
            format!("count(*) OVER (PARTITION BY {cols}) > 1")
        }
        Rule::InRelation {
            column,
            relation: other,
            field,
        } => {
            return format!(
                "SELECT t.*, (t.{c} IS NOT NULL AND r._k IS NULL) AS _failed FROM {relation} t \
                 LEFT JOIN (SELECT DISTINCT {f} AS _k FROM {other}) r ON r._k = t.{c}",
                c = ident(column),
                f = ident(field),
            );
        }
        _ => unreachable!("not a row-level rule"),
    };
    format!("SELECT *, {failed} AS _failed FROM {relation}")
}

async fn count(ctx: &SessionContext, sql: &str) -> deltalake::datafusion::error::Result<u64> {
    Ok(int_cell(&ctx.sql(sql).await?.collect().await?, 0))
}

/// The integer in `column` of the first row (0 when there is none).
fn int_cell(batches: &[RecordBatch], column: usize) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(column)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0) as u64
}

/// The first `limit` rows, each as `a | b | c`.
fn rows_as_text(batches: &[RecordBatch], limit: usize) -> Vec<String> {
    let options = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for row in 0..batch.num_rows() {
            if out.len() == limit {
                return out;
            }
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            );
        }
    }
    out
}

fn results_batch(results: &[CheckResult]) -> Result<RecordBatch> {
    let now = chrono::Utc::now().timestamp_micros();
    let strings = |f: &dyn Fn(&CheckResult) -> Option<String>| -> ArrayRef {
        Arc::new(results.iter().map(f).collect::<StringArray>())
    };
    let schema = Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "checked_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("suite", DataType::Utf8, false),
        Field::new("check", DataType::Utf8, false),
        Field::new("expectation", DataType::Utf8, false),
        Field::new("layer", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, true),
        Field::new("column", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("passed", DataType::Boolean, false),
        Field::new("observed_value", DataType::Utf8, false),
        Field::new("failing_rows", DataType::Int64, false),
        Field::new("failing_keys", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.run_id.clone())),
        Arc::new(TimestampMicrosecondArray::from(vec![now; results.len()]).with_timezone("UTC")),
        strings(&|r| Some(r.suite.clone())),
        strings(&|r| Some(r.check.clone())),
        strings(&|r| Some(r.expectation.clone())),
        strings(&|r| Some(r.layer.name().to_owned())),
        strings(&|r| r.table.clone()),
        strings(&|r| r.column.clone()),
        strings(&|r| Some(r.action.name().to_owned())),
        Arc::new(
            results
                .iter()
                .map(|r| Some(r.passed))
                .collect::<BooleanArray>(),
        ),
        strings(&|r| Some(r.observed_value.clone())),
        Arc::new(
            results
                .iter()
                .map(|r| r.failing_rows as i64)
                .collect::<Int64Array>(),
        ),
        strings(&|r| Some(r.failing_keys.join(", "))),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| Error::Query {
        check: String::new(),
        source: e.into(),
    })
}
