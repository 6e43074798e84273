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

use std::time::Instant;

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use serde_json::{Map, Value};

use crate::bus::{Batch, Bus, partition_for};
use crate::idcard::Table;
use crate::lake::{Lake, Layer, collect_batches, session};
use crate::offsets::{OFFSET, PARTITION};

use super::Gateway;
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
    /// Delta versions after the run: bronze, silver and each gold model that reads the table.
    pub versions: serde_json::Value,
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

/// The messages of `records` for `table`'s topic, each with its partition.
fn messages(table: &Table, records: &[Value], partitions: u32) -> (Batch, Vec<u32>) {
    let now = chrono::Utc::now();
    let timestamp = crate::source::rfc3339_micros(now);
    let mut batch = Batch::default();
    let mut partition_of = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let (key, value) = match record {
            Value::Object(fields) => {
                let key = table
                    .key()
                    .iter()
                    .map(|k| match fields.get(k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|");
                let mut message: Map<String, Value> = fields.clone();
                message.insert("_source_line".into(), Value::String((i + 1).to_string()));
                message.insert(
                    "_ingestion_timestamp".into(),
                    Value::String(timestamp.clone()),
                );
                (key, Value::Object(message).to_string())
            }
            // Not an object: bronze rejects it with the reason, like any unreadable message.
            other => (format!("_broken:{}", i + 1), other.to_string()),
        };
        let partition = partition_for(key.as_bytes(), partitions);
        partition_of.push(partition);
        batch.push(key.as_bytes(), value.as_bytes(), now.timestamp_millis());
    }
    (batch, partition_of)
}

/// Sends `records` to the topic; returns each record's `(partition, offset)`. The embedded log
/// only: its end offsets, read under the producer lease, are where the batch lands.
fn send(bus: &Bus, table: &Table, records: &[Value]) -> Result<Vec<(u32, u64)>, Problem> {
    let Bus::Embedded(log) = bus else {
        return Err(Problem::unavailable(
            "/ingest runs on the embedded log for now; this gateway's bus is Kafka",
        )
        .with_hint("start `framework serve` without --bus kafka://..."));
    };
    let topic = table.topic();
    let bus_err = |e: crate::bus::Error| Problem::internal(format!("topic {topic}: {e}"));
    let partitions = bus
        .ensure_topic(topic, table.config.topic.partitions)
        .map_err(bus_err)?;
    let (batch, partition_of) = messages(table, records, partitions);
    let _lease = bus.producer_lease(topic).map_err(bus_err)?;
    let mut next: Vec<u64> = (0..partitions)
        .map(|p| log.end_offset(topic, p))
        .collect::<Result<_, _>>()
        .map_err(bus_err)?;
    bus.send(topic, &batch).map_err(bus_err)?;
    Ok(partition_of
        .into_iter()
        .map(|p| {
            let offset = next[p as usize];
            next[p as usize] += 1;
            (p, offset)
        })
        .collect())
}

/// Runs one request: send, then the pipeline for the table, then what was kept out and the
/// versions written.
pub async fn ingest(
    gateway: &std::sync::Arc<Gateway>,
    table: &Table,
    records: Vec<Value>,
) -> Result<IngestReport, Problem> {
    let started = Instant::now();
    let name = table.name().to_owned();
    if records.is_empty() {
        return Err(Problem::bad_request("the request holds no record"));
    }
    if records.len() > gateway.limits.max_records {
        return Err(Problem::too_large(format!(
            "{} records; a request holds at most {}",
            records.len(),
            gateway.limits.max_records
        )));
    }
    // One pipeline run per table at a time in this process (the lake's leases guard the rest).
    let _turn = gateway.turn(&name).await;
    let bus = gateway.bus.clone();
    let owned = table.clone();
    let positions = {
        let records = records.clone();
        tokio::task::spawn_blocking(move || send(&bus, &owned, &records))
            .await
            .map_err(|e| Problem::internal(format!("sending to the topic: {e}")))??
    };
    // The pipeline on a blocking thread of its own (its future borrows across awaits in ways
    // the handler's `Send` bound cannot see through).
    let report = {
        let gateway = gateway.clone();
        let tables = vec![name.clone()];
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| Problem::internal(format!("running the pipeline for {name}: {e}")))?
    };
    if let Some(failure) = &report.failure {
        return Err(Problem::internal(format!(
            "the pipeline for {name} stopped: {failure}"
        )));
    }
    let rejected = refused(
        &gateway.lake,
        Layer::Reject,
        &name,
        "_reason",
        table.topic(),
        &positions,
    )
    .await?;
    let quarantined = refused(
        &gateway.lake,
        Layer::Quarantine,
        &name,
        "_failed_rule",
        table.topic(),
        &positions,
    )
    .await?;
    let mut gold = serde_json::Map::new();
    for model in &report.models {
        if let Some(stats) = gateway
            .lake
            .stats(Layer::Gold, &model.model)
            .await
            .map_err(|e| Problem::internal(e.to_string()))?
        {
            gold.insert(model.model.clone(), stats.version.into());
        }
    }
    let mut layers = Vec::new();
    for layer in [Layer::Bronze, Layer::Silver] {
        let stats = gateway
            .lake
            .stats(layer, &name)
            .await
            .map_err(|e| Problem::internal(e.to_string()))?;
        layers.push(stats.map(|s| s.version));
    }
    let versions = serde_json::json!({
        "bronze": layers[0],
        "silver": layers[1],
        "gold": gold,
    });
    Ok(IngestReport {
        table: name.clone(),
        records: records.len(),
        accepted: records.len() - rejected.len() - quarantined.len(),
        rejected,
        quarantined,
        versions,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The rows of `layer` (reject or quarantine) at the request's positions, by record index,
/// with the value of `reason_column`.
async fn refused(
    lake: &Lake,
    layer: Layer,
    table: &str,
    reason_column: &str,
    topic: &str,
    positions: &[(u32, u64)],
) -> Result<Vec<Refused>, Problem> {
    let ctx = session();
    let internal = |e: &dyn std::fmt::Display| {
        Problem::internal(format!("reading {}/{table}: {e}", layer.dir()))
    };
    if !lake
        .register(&ctx, layer, table, "t")
        .await
        .map_err(|e| internal(&e))?
    {
        return Ok(Vec::new());
    }
    let (min, max) = positions
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &(_, o)| (lo.min(o), hi.max(o)));
    let topic_filter = if layer == Layer::Reject {
        format!("_topic = '{}' AND ", topic.replace('\'', "''"))
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT DISTINCT {PARTITION}, {OFFSET}, CAST({reason_column} AS VARCHAR) AS reason FROM t \
         WHERE {topic_filter}{OFFSET} BETWEEN {min} AND {max}"
    );
    let frame = ctx.sql(&sql).await.map_err(|e| internal(&e))?;
    let batches: Vec<RecordBatch> = collect_batches(frame).await.map_err(|e| internal(&e))?;
    let mut out = Vec::new();
    let as_type = |batch: &RecordBatch, i: usize, to: &DataType| {
        cast(batch.column(i), to).map_err(|e| internal(&e))
    };
    for batch in &batches {
        let partitions = as_type(batch, 0, &DataType::Int64)?;
        let offsets = as_type(batch, 1, &DataType::Int64)?;
        let reasons = as_type(batch, 2, &DataType::Utf8)?;
        let partitions = partitions.as_primitive::<Int64Type>();
        let offsets = offsets.as_primitive::<Int64Type>();
        let reasons = reasons.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let at = (partitions.value(row), offsets.value(row));
            if let Some(index) = positions
                .iter()
                .position(|&(p, o)| (i64::from(p), o as i64) == at)
            {
                out.push(Refused {
                    index,
                    reason: reasons.value(row).to_owned(),
                });
            }
        }
    }
    out.sort_by_key(|r| r.index);
    out.dedup_by_key(|r| r.index);
    Ok(out)
}
