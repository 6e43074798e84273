//! `POST /ingest/{table}`: a JSON batch through the whole pipeline, one run per request.
//!
//! The body is `{"records": [...]}` (`application/json`) or one record per line
//! (`application/x-ndjson`). Every record becomes one message on the table's topic, exactly as
//! the CSV producer would send it (the key from the idcard's key columns, `_source_line` = the
//! record's position, 1-based, and `_ingestion_timestamp`); then bronze, silver and the gold
//! models that read the table run, as `framework run --table T --no-produce` does. A record that
//! does not fit the idcard (not an object, an unknown field, a value that is not of its column's
//! type) lands in the reject table with the reason, and one that breaks a quarantine rule in the
//! quarantine table, like any message: the response lists both by record index. The response
//! comes once the accepted records are visible in silver and gold, with the versions written.

use std::collections::HashMap;
use std::time::Instant;

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use serde_json::{Map, Value};

use crate::bus::{Batch, partition_for};
use crate::idcard::Table;
use crate::lake::{Lake, Layer, collect_batches, session};
use crate::offsets::{OFFSET, PARTITION};
use crate::pii::edge::{Edge, Outcome};

use super::Gateway;
use super::keys::Idempotency;
use super::lanes::{Appended, Position};
use super::problem::Problem;

/// What an ingest did, as the response tells it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestReport {
    pub table: String,
    pub records: usize,
    /// Records now in silver (or already there, unchanged).
    pub accepted: usize,
    pub rejected: Vec<Refused>,
    pub quarantined: Vec<Refused>,
    /// Where each record landed on the topic, in request order.
    pub offsets: Vec<Position>,
    /// The answer to an earlier request with the same `Idempotency-Key`: nothing was appended.
    pub replayed: bool,
    /// Delta versions after the run: bronze, silver and each gold model that reads the table.
    pub versions: serde_json::Value,
    pub seconds: f64,
}

impl IngestReport {
    pub fn new(
        table: &str,
        records: usize,
        appended: Appended,
        rejected: Vec<Refused>,
        quarantined: Vec<Refused>,
        versions: Value,
        started: Instant,
    ) -> Self {
        Self {
            table: table.to_owned(),
            records,
            accepted: records - rejected.len() - quarantined.len(),
            rejected,
            quarantined,
            offsets: appended.positions,
            replayed: appended.replayed,
            versions,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// What `/ingest_fast` answers once the records are durable (202): where they landed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DurableReport {
    pub table: String,
    pub records: usize,
    pub durable: bool,
    pub offsets: Vec<Position>,
    pub replayed: bool,
    pub seconds: f64,
}

/// A record kept out, by its index in the request, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    pub index: usize,
    pub reason: String,
}

/// The records of a request body.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Value>, Problem> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("application/json");
    match media {
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
            let mut records = Vec::new();
            for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let record: Value = serde_json::from_slice(line).map_err(|e| {
                    Problem::bad_request(format!(
                        "line {}: invalid JSON at column {}: {e}",
                        i + 1,
                        e.column()
                    ))
                })?;
                records.push(record);
            }
            Ok(records)
        }
        "application/json" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                records: Vec<Value>,
            }
            let parsed: Body = serde_json::from_slice(body).map_err(|e| {
                Problem::bad_request(format!(
                    "invalid body at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ))
                .with_hint(r#"send {"records": [{...}, ...]} or NDJSON with Content-Type: application/x-ndjson"#)
            })?;
            Ok(parsed.records)
        }
        other => Err(
            Problem::unsupported(format!("Content-Type `{other}` is not accepted"))
                .with_hint("application/json ({\"records\": [...]}) or application/x-ndjson"),
        ),
    }
}

/// Adds the messages of `records` for `table`'s topic to `batch`; returns each one's partition.
/// PII columns are encrypted here by `edge` (the table's, [`crate::pii::edge`]), as the CSV
/// producer does; a record that breaks an edge expectation goes on as a reject, its text
/// encrypted.
pub fn push_messages(
    table: &Table,
    edge: &mut Option<Edge>,
    records: &[Value],
    partitions: u32,
    batch: &mut Batch,
) -> Vec<u32> {
    let now = chrono::Utc::now();
    let timestamp = crate::source::rfc3339_micros(now);
    let mut partition_of = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let line = Value::String((i + 1).to_string());
        let broken = |reason: String, edge: &Edge| {
            let raw = edge
                .seal_raw(&record.to_string())
                .unwrap_or_else(|e| e.to_string());
            let mut message = Map::new();
            message.insert("_raw".into(), Value::String(raw));
            message.insert("_error".into(), Value::String(reason));
            message.insert("_source_line".into(), line.clone());
            message.insert(
                "_ingestion_timestamp".into(),
                Value::String(timestamp.clone()),
            );
            (
                format!("_broken:{}", i + 1),
                Value::Object(message).to_string(),
            )
        };
        let (key, value) = match (record, &mut *edge) {
            (Value::Object(fields), Some(edge)) => match protect(table, edge, i, fields) {
                Ok(message) => message_of(table, message, &line, &timestamp),
                Err(reason) => broken(reason, edge),
            },
            (Value::Object(fields), None) => message_of(table, fields.clone(), &line, &timestamp),
            (_, Some(edge)) => broken(format!("record {}: expected a JSON object", i + 1), edge),
            // Not an object: bronze rejects it with the reason, like any unreadable message.
            (other, None) => (format!("_broken:{}", i + 1), other.to_string()),
        };
        partition_of.push(partition_for(key.as_bytes(), partitions));
        batch.push(key.as_bytes(), value.as_bytes(), now.timestamp_millis());
    }
    partition_of
}

/// `fields` with their PII values encrypted, or the reason the record is a reject.
fn protect(
    table: &Table,
    edge: &mut Edge,
    index: usize,
    fields: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let columns = &table.columns;
    // The PII cells as text, as bronze would read them (a number or a bool as its JSON text);
    // an array or an object cannot be a string cell: a reject, sealed like any.
    // A nested column with PII leaves goes as its JSON text.
    let mut texts: Vec<Option<String>> = vec![None; columns.len()];
    for (at, column) in columns.iter().enumerate().filter(|(at, _)| edge.reads(*at)) {
        texts[at] = match fields.get(&column.name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(nested @ (Value::Array(_) | Value::Object(_))) if column.data_type.is_nested() => {
                Some(nested.to_string())
            }
            Some(Value::Array(_) | Value::Object(_)) => {
                return Err(format!(
                    "column `{}`: expected a text value, got a nested value",
                    column.name
                ));
            }
            Some(other) => Some(other.to_string()),
        };
    }
    let outcome = edge
        .protect((index + 1) as u64, |at| texts[at].as_deref())
        .map_err(|e| e.to_string())?;
    if let Outcome::Reject(reason) = outcome {
        return Err(reason);
    }
    let mut message = fields.clone();
    for (at, column) in columns.iter().enumerate() {
        if let Some(slot) = edge.slot(at)
            && message.contains_key(&column.name)
        {
            let sealed = match edge.cell(slot) {
                None => Value::Null,
                Some(json) if column.data_type.is_nested() => {
                    serde_json::from_str(json).map_err(|e| e.to_string())?
                }
                Some(text) => Value::String(text.to_owned()),
            };
            message.insert(column.name.clone(), sealed);
        }
    }
    Ok(message)
}

/// The key and value of a record's message.
fn message_of(
    table: &Table,
    mut message: Map<String, Value>,
    line: &Value,
    timestamp: &str,
) -> (String, String) {
    let key = table
        .key()
        .iter()
        .map(|k| match message.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|");
    message.insert("_source_line".into(), line.clone());
    message.insert(
        "_ingestion_timestamp".into(),
        Value::String(timestamp.to_owned()),
    );
    (key, Value::Object(message).to_string())
}

/// Checks the number of records of a request.
pub fn check_count(records: &[Value], max: usize) -> Result<(), Problem> {
    if records.is_empty() {
        return Err(Problem::bad_request("the request holds no record"));
    }
    if records.len() > max {
        return Err(Problem::too_large(format!(
            "{} records; a request holds at most {max}",
            records.len()
        )));
    }
    Ok(())
}

/// The pipeline for `name`, once this process runs no other for it.
async fn run_pipeline(
    gateway: &std::sync::Arc<Gateway>,
    name: &str,
) -> Result<crate::pipeline::RunReport, Problem> {
    // One pipeline run per table at a time in this process (the lake's leases guard the rest).
    let turn = gateway.turn(name).await;
    // The pipeline on a blocking thread of its own (its future borrows across awaits in ways
    // the handler's `Send` bound cannot see through). It holds the turn to its end, also when
    // the request stopped waiting for it.
    let gateway = gateway.clone();
    let tables = vec![name.to_owned()];
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let options = gateway.run_options();
        runtime
            .block_on(crate::pipeline::run(
                &gateway.project,
                &gateway.models,
                &gateway.checks,
                &tables,
                &gateway.bus,
                &gateway.lake,
                &options,
            ))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| Problem::internal(format!("running the pipeline for {name}: {e}")))?
    .map_err(|e| Problem::internal(format!("running the pipeline for {name}: {e}")))
}

/// Runs one request: append, then the pipeline for the table (checks included), then what was
/// kept out and the versions written.
pub async fn ingest(
    gateway: &std::sync::Arc<Gateway>,
    table: &Table,
    records: Vec<Value>,
    idempotency: Option<Idempotency>,
) -> Result<IngestReport, Problem> {
    let started = Instant::now();
    let name = table.name().to_owned();
    check_count(&records, gateway.limits.max_records)?;
    let count = records.len();
    let appended = gateway
        .lanes(table)?
        .append(records, idempotency, false)
        .await?;
    // Waiting for its turn and for the run are bounded; past the limit the run goes on
    // without this request.
    let limit = gateway.limits.visible_timeout;
    let report = tokio::time::timeout(limit, run_pipeline(gateway, &name))
        .await
        .map_err(|_| super::not_visible_in_time(&name, &appended.positions, limit))??;
    if let Some(failure) = &report.failure {
        return Err(Problem::unprocessable(format!(
            "the records are on the topic and in bronze (offsets {}), but the quality checks stopped the pipeline for {name}: {failure}",
            offsets_text(&appended.positions)
        )));
    }
    let positions = &appended.positions;
    let rejected = reasons_at(&gateway.lake, Layer::Reject, table, positions).await?;
    let quarantined = reasons_at(&gateway.lake, Layer::Quarantine, table, positions).await?;
    let (rejected, quarantined) = (
        by_index(positions, &rejected),
        by_index(positions, &quarantined),
    );
    let models: Vec<String> = report.models.iter().map(|m| m.model.clone()).collect();
    let versions = versions(&gateway.lake, &name, &models).await?;
    Ok(IngestReport::new(
        &name,
        count,
        appended,
        rejected,
        quarantined,
        versions,
        started,
    ))
}

pub(crate) fn offsets_text(positions: &[Position]) -> String {
    let shown: Vec<String> = positions
        .iter()
        .take(5)
        .map(|p| format!("{}:{}", p.partition, p.offset))
        .collect();
    let more = positions.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Delta versions of `table`'s bronze and silver and of `models` in gold.
pub async fn versions(lake: &Lake, table: &str, models: &[String]) -> Result<Value, Problem> {
    let internal = |e: crate::lake::Error| Problem::internal(e.to_string());
    // Read at once: each is a listing of the table's log.
    let (bronze, silver, gold_versions) = futures::join!(
        lake.version(Layer::Bronze, table),
        lake.version(Layer::Silver, table),
        futures::future::join_all(models.iter().map(|m| lake.version(Layer::Gold, m)))
    );
    let mut gold = serde_json::Map::new();
    for (model, version) in models.iter().zip(gold_versions) {
        if let Some(version) = version.map_err(internal)? {
            gold.insert(model.clone(), version.into());
        }
    }
    Ok(serde_json::json!({
        "bronze": bronze.map_err(internal)?,
        "silver": silver.map_err(internal)?,
        "gold": gold,
    }))
}

/// The records at `positions` found in `reasons`, by their index in the request.
pub fn by_index(positions: &[Position], reasons: &HashMap<Position, String>) -> Vec<Refused> {
    positions
        .iter()
        .enumerate()
        .filter_map(|(index, at)| {
            reasons.get(at).map(|reason| Refused {
                index,
                reason: reason.clone(),
            })
        })
        .collect()
}

/// The rows of `layer` (reject or quarantine) of `table` at `positions`, with their reason
/// (`_reason`, `_failed_rule`).
pub async fn reasons_at(
    lake: &Lake,
    layer: Layer,
    table: &Table,
    positions: &[Position],
) -> Result<HashMap<Position, String>, Problem> {
    let name = table.name();
    let ctx = session();
    let internal = |e: &dyn std::fmt::Display| {
        Problem::internal(format!("reading {}/{name}: {e}", layer.dir()))
    };
    let mut out = HashMap::new();
    if positions.is_empty()
        || !lake
            .register(&ctx, layer, name, "t")
            .await
            .map_err(|e| internal(&e))?
    {
        return Ok(out);
    }
    let (min, max) = positions.iter().fold((u64::MAX, 0), |(lo, hi), p| {
        (lo.min(p.offset), hi.max(p.offset))
    });
    let (reason_column, topic_filter) = if layer == Layer::Reject {
        (
            "_reason",
            format!("_topic = '{}' AND ", table.topic().replace('\'', "''")),
        )
    } else {
        ("_failed_rule", String::new())
    };
    let sql = format!(
        "SELECT DISTINCT {PARTITION}, {OFFSET}, CAST({reason_column} AS VARCHAR) AS reason FROM t \
         WHERE {topic_filter}{OFFSET} BETWEEN {min} AND {max}"
    );
    let frame = ctx.sql(&sql).await.map_err(|e| internal(&e))?;
    let batches: Vec<RecordBatch> = collect_batches(frame).await.map_err(|e| internal(&e))?;
    let as_type = |batch: &RecordBatch, i: usize, to: &DataType| {
        cast(batch.column(i), to).map_err(|e| internal(&e))
    };
    let wanted: std::collections::HashSet<&Position> = positions.iter().collect();
    for batch in &batches {
        let partitions = as_type(batch, 0, &DataType::Int64)?;
        let offsets = as_type(batch, 1, &DataType::Int64)?;
        let reasons = as_type(batch, 2, &DataType::Utf8)?;
        let partitions = partitions.as_primitive::<Int64Type>();
        let offsets = offsets.as_primitive::<Int64Type>();
        let reasons = reasons.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let at = Position {
                partition: partitions.value(row) as u32,
                offset: offsets.value(row) as u64,
            };
            if wanted.contains(&at) {
                out.entry(at)
                    .or_insert_with(|| reasons.value(row).to_owned());
            }
        }
    }
    Ok(out)
}
