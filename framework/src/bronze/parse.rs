//! Messages -> typed Arrow rows, or rejects with the reason.

use std::sync::Arc;

use super::message::Rejected;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

use crate::bus::{Message, columns};
use crate::idcard::{ColumnType, Table};
use crate::offsets::{OFFSET, PARTITION};

/// Bronze metadata columns, after the idcard's columns.
pub const META: &[&str] = &[
    "_ingestion_timestamp",
    "_bronze_ingested_at",
    "_topic",
    PARTITION,
    OFFSET,
    "_key",
    "_source_line",
    "_ingestion_date",
];

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of the bronze table of `table`.
pub fn bronze_schema(table: &Table) -> SchemaRef {
    let mut fields = table.arrow_fields();
    fields.extend([
        Field::new("_ingestion_timestamp", utc_micros(), false),
        Field::new("_bronze_ingested_at", utc_micros(), false),
        Field::new("_topic", DataType::Utf8, false),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new("_key", DataType::Utf8, true),
        Field::new("_source_line", DataType::Int64, true),
        Field::new("_ingestion_date", DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Schema of the reject table.
pub fn reject_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("_topic", DataType::Utf8, false),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new("_key", DataType::Utf8, true),
        Field::new("_source_line", DataType::Int64, true),
        Field::new("_payload", DataType::Utf8, false),
        Field::new("_reason", DataType::Utf8, false),
        Field::new("_rejected_at", utc_micros(), false),
    ]))
}

/// One batch of messages, split.
#[derive(Debug)]
pub struct Parsed {
    /// Rows that fit the idcard, in bronze schema.
    pub rows: RecordBatch,
    /// Rows that do not, in reject schema, with their offsets.
    pub rejects: RecordBatch,
}

/// The parsed batches of several partitions as one (a single part is passed through).
pub fn concat(parts: Vec<Result<Parsed, ArrowError>>) -> Result<Parsed, ArrowError> {
    let parts: Vec<Parsed> = parts.into_iter().collect::<Result<_, _>>()?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part"));
    }
    let Some(first) = parts.first() else {
        return Err(ArrowError::InvalidArgumentError(
            "no batch to concatenate".into(),
        ));
    };
    let (rows_schema, rejects_schema) = (first.rows.schema(), first.rejects.schema());
    Ok(Parsed {
        rows: deltalake::arrow::compute::concat_batches(
            &rows_schema,
            parts.iter().map(|p| &p.rows),
        )?,
        rejects: deltalake::arrow::compute::concat_batches(
            &rejects_schema,
            parts.iter().map(|p| &p.rejects),
        )?,
    })
}

/// Types the messages of one partition batch: each message's cells read as text, the columns
/// typed, the metadata columns added, then the batch split into rows and rejects.
pub fn parse_messages(
    table: &Table,
    topic: &str,
    messages: &[Message],
    now: DateTime<Utc>,
) -> Result<Parsed, ArrowError> {
    let text = read_cells(table, messages);
    let mut keys =
        StringBuilder::with_capacity(messages.len(), messages.iter().map(|m| m.key.len()).sum());
    for message in messages {
        keys.append_value(String::from_utf8_lossy(&message.key));
    }
    let ids = Ids {
        topic,
        keys: Keys::Every(keys.finish()),
        partitions: messages.iter().map(|m| m.partition as i32).collect(),
        offsets: messages.iter().map(|m| m.offset as i64).collect(),
    };
    split(table, text, ids, now, &|i| {
        String::from_utf8_lossy(&messages[i].value).into_owned()
    })
}

/// Types a block of messages as columns ([`crate::bus::columns`]) as [`parse_messages`] types
/// the same messages one by one, without reading any JSON: the idcard's columns are taken by
/// name, typed a column at a time.
pub fn parse_columns(
    table: &Table,
    topic: &str,
    partition: u32,
    first: u64,
    batch: &RecordBatch,
    now: DateTime<Utc>,
) -> Result<Parsed, ArrowError> {
    let text = cells_of_columns(table, batch);
    let n = batch.num_rows();
    let key: Vec<&str> = table.key().iter().map(String::as_str).collect();
    let keys = match columns::keys_declared_as(batch, &key, "|") {
        // The producer's layout: only the stored keys need comparing with the record's own.
        Some(stored) if own_key_text(table, &text.columns).is_some() => {
            Keys::Stored(stored.clone())
        }
        _ => Keys::Every(columns::keys(batch).into_owned()),
    };
    let ids = Ids {
        topic,
        keys,
        partitions: Int32Array::from(vec![partition as i32; n]),
        offsets: Int64Array::from_iter_values((first..first + n as u64).map(|o| o as i64)),
    };
    let values = columns::Values::new(batch);
    split(table, text, ids, now, &|i| {
        let mut value = Vec::new();
        values.write(&mut value, i);
        String::from_utf8_lossy(&value).into_owned()
    })
}

/// Where a batch's messages come from: topic, key, partition and offset of each.
struct Ids<'a> {
    topic: &'a str,
    keys: Keys,
    partitions: Int32Array,
    offsets: Int64Array,
}

/// The messages' keys.
enum Keys {
    /// Every message's key.
    Every(StringArray),
    /// A block's keys as stored: null where a message's key is the record's own key (see
    /// [`foreign_keys`]), the key elsewhere (a block that did not go through the log stores
    /// every key).
    Stored(StringArray),
}

/// Types the text columns, adds the metadata columns and splits the batch into rows and
/// rejects (`payload`: message `i`'s value as text).
fn split(
    table: &Table,
    mut text: Text,
    ids: Ids<'_>,
    now: DateTime<Utc>,
    payload: &dyn Fn(usize) -> String,
) -> Result<Parsed, ArrowError> {
    let key_text = own_key_text(table, &text.columns);
    let (foreign, stored) = match &ids.keys {
        Keys::Every(keys) => (foreign_keys(key_text.as_deref(), keys), None),
        Keys::Stored(stored) => (
            foreign_keys(key_text.as_deref(), stored),
            Some(stored.clone()),
        ),
    };
    let mut columns = type_columns(table, text.columns, &mut text.reasons)?;
    let meta = Meta::of(ids, text.timestamps, text.lines, now);
    columns.extend(meta.columns(foreign));
    // A reject keeps its key whatever it is: a stored null is the record's own key, joined.
    let reject_key = |i: usize| match (&stored, &key_text) {
        (Some(stored), Some(key_text)) if stored.is_null(i) => Some(join_own_key(key_text, i)),
        _ => meta.keys.is_valid(i).then(|| meta.keys.value(i).to_owned()),
    };
    let all = RecordBatch::try_new(bronze_schema(table), columns)?;
    let good: BooleanArray = text.reasons.iter().map(|r| Some(r.is_none())).collect();
    Ok(Parsed {
        rows: filter_record_batch(&all, &good)?,
        rejects: rejects(payload, &reject_key, &text.reasons, &meta)?,
    })
}

/// Bronze's `_key`: a message's key where it is not the record's own key, null where it is.
///
/// A record's own key is the text of its key columns joined by `|` (a null cell as empty text),
/// as `framework produce` and the gateway key their messages. That key is a second copy of
/// the key columns, and was half of geolocation's bronze bytes. A key that differs (another
/// producer's, or a keyless message's empty key) is kept as it came; so is every key of a table
/// whose key names a nested path. Rejects keep every key.
fn foreign_keys(key_text: Option<&[StringArray]>, keys: &StringArray) -> StringArray {
    let Some(key_columns) = key_text else {
        return keys.clone();
    };
    let mut out = StringBuilder::with_capacity(keys.len(), 0);
    for row in 0..keys.len() {
        let key = keys.is_valid(row).then(|| keys.value(row));
        match key {
            Some(key) if is_own_key(key, key_columns, row) => out.append_null(),
            key => out.append_option(key),
        }
    }
    out.finish()
}

/// The text columns of the table's key, in key order; none when the key names a nested path.
fn own_key_text(table: &Table, text: &[StringArray]) -> Option<Vec<StringArray>> {
    table
        .key()
        .iter()
        .map(|k| {
            let at = table.columns.iter().position(|c| &c.name == k)?;
            Some(text[at].clone())
        })
        .collect()
}

/// Row `row`'s own key: its key cells joined by `|`, as the producer joins them.
fn join_own_key(key_columns: &[StringArray], row: usize) -> String {
    let columns: Vec<&StringArray> = key_columns.iter().collect();
    let mut key = String::new();
    columns::join_key(&columns, "|", row, &mut key);
    key
}

/// Whether `key` is row `row`'s cells of `key_columns` joined by `|`, compared piece by piece.
fn is_own_key(key: &str, key_columns: &[StringArray], row: usize) -> bool {
    let mut rest = key;
    for (i, column) in key_columns.iter().enumerate() {
        let cell = if column.is_valid(row) {
            column.value(row)
        } else {
            ""
        };
        if i > 0 {
            match rest.strip_prefix('|') {
                Some(after) => rest = after,
                None => return false,
            }
        }
        match rest.strip_prefix(cell) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// A block's cells as text columns, with the reasons the JSON reading of the same messages
/// ([`super::message::read`]) would give: a broken record's `_error`, an unknown field, an
/// `_ingestion_timestamp` that is not RFC 3339.
fn cells_of_columns(table: &Table, batch: &RecordBatch) -> Text {
    let n = batch.num_rows();
    let mut reasons: Vec<Option<String>> = vec![None; n];
    let mut found: Vec<Option<&StringArray>> = vec![None; table.columns.len()];
    let (mut timestamps, mut lines, mut errors) = (None, None, None);
    let mut unknown: Vec<(&str, &StringArray)> = Vec::new();
    for (name, column) in columns::fields(batch) {
        match name {
            "_raw" => {}
            "_error" => errors = Some(column),
            "_ingestion_timestamp" => timestamps = Some(column),
            "_source_line" => lines = Some(column),
            name => match table.columns.iter().position(|c| c.name == name) {
                Some(at) => found[at] = Some(column),
                None => unknown.push((name, column)),
            },
        }
    }
    if let Some(errors) = errors {
        for (i, reason) in reasons.iter_mut().enumerate() {
            if errors.is_valid(i) {
                let error = errors.value(i);
                *reason = Some(if error.is_empty() {
                    super::message::BROKEN.to_owned()
                } else {
                    error.to_owned()
                });
            }
        }
    }
    for (name, column) in unknown {
        // A metadata field is written only where set; any other field is in every message.
        let metadata = name.starts_with('_');
        for (i, reason) in reasons.iter_mut().enumerate() {
            if reason.is_none() && (!metadata || column.is_valid(i)) {
                *reason = Some(super::message::unknown_field(name));
            }
        }
    }
    let message_times = columns::timestamps(batch);
    let mut micros: Vec<i64> = message_times.values().iter().map(|ms| ms * 1000).collect();
    if let Some(texts) = timestamps {
        let mut times = IngestionTimes::default();
        for (i, text) in texts.iter().enumerate() {
            let Some(text) = text.filter(|t| !t.is_empty()) else {
                continue;
            };
            match times.micros(text) {
                Ok(at) => micros[i] = at,
                Err(reason) => {
                    reasons[i].get_or_insert(reason);
                }
            }
        }
    }
    let lines = match lines {
        Some(texts) => texts
            .iter()
            .map(|t| t.and_then(|t| t.parse().ok()))
            .collect(),
        None => vec![None; n],
    };
    let columns = found
        .into_iter()
        .map(|column| match column {
            // An empty text is null, as in a JSON message.
            Some(column) if (0..n).any(|i| column.is_valid(i) && column.value_length(i) == 0) => {
                column.iter().map(|v| v.filter(|v| !v.is_empty())).collect()
            }
            Some(column) => column.clone(),
            None => StringArray::new_null(n),
        })
        .collect();
    Text {
        columns,
        reasons,
        timestamps: micros,
        lines,
    }
}

/// The messages of a batch as text columns, before typing.
struct Text {
    /// One text column per idcard column (null where the message was unreadable).
    columns: Vec<StringArray>,
    /// Per message, why it is rejected (so far).
    reasons: Vec<Option<String>>,
    /// `_ingestion_timestamp` per message, microseconds (the message time when absent).
    timestamps: Vec<i64>,
    lines: Vec<Option<i64>>,
}

/// Reads each message's cells: by the scan when it is in the producer's layout, else by the
/// JSON parser (which also gives the reason of an unreadable message).
fn read_cells(table: &Table, messages: &[Message]) -> Text {
    let n = messages.len();
    let mut reasons: Vec<Option<String>> = vec![None; n];
    let mut columns: Vec<StringBuilder> = table
        .columns
        .iter()
        .map(|_| StringBuilder::with_capacity(n, n * 16))
        .collect();
    let mut timestamps = Vec::with_capacity(n);
    let mut lines = Vec::with_capacity(n);
    let layout = super::message::Layout::new(table);
    let mut cells = Vec::with_capacity(table.columns.len());
    let mut times = IngestionTimes::default();
    for (i, message) in messages.iter().enumerate() {
        // A timestamp that is not RFC 3339 is left to the full reading, which gives the reason.
        if let Some((text, line)) = super::message::read_fast(&layout, &message.value, &mut cells)
            && let Ok(micros) = times.micros(text)
        {
            for (builder, cell) in columns.iter_mut().zip(&cells) {
                builder.append_option(*cell);
            }
            timestamps.push(micros);
            lines.push(Some(line));
            continue;
        }
        let fields = super::message::read(table, &message.value).and_then(|fields| {
            let timestamp = match &fields.timestamp {
                Some(text) => Some(ingestion_micros(text).map_err(|reason| Rejected {
                    reason,
                    source_line: fields.source_line,
                })?),
                None => None,
            };
            Ok((fields, timestamp))
        });
        match fields {
            Ok((fields, timestamp)) => {
                for (builder, cell) in columns.iter_mut().zip(fields.cells) {
                    builder.append_option(cell);
                }
                timestamps.push(timestamp.unwrap_or(message.timestamp_ms * 1000));
                lines.push(fields.source_line);
            }
            Err(rejected) => {
                reasons[i] = Some(rejected.reason);
                for builder in &mut columns {
                    builder.append_null();
                }
                timestamps.push(message.timestamp_ms * 1000);
                lines.push(rejected.source_line);
            }
        }
    }
    Text {
        columns: columns.iter_mut().map(StringBuilder::finish).collect(),
        reasons,
        timestamps,
        lines,
    }
}

/// `_ingestion_timestamp` texts as microseconds. Messages of one produced batch share their
/// text: it is parsed once.
#[derive(Default)]
struct IngestionTimes<'a> {
    last: Option<(&'a str, i64)>,
}

impl<'a> IngestionTimes<'a> {
    fn micros(&mut self, text: &'a str) -> Result<i64, String> {
        match self.last {
            Some((seen, at)) if seen == text => Ok(at),
            _ => {
                let at = ingestion_micros(text)?;
                self.last = Some((text, at));
                Ok(at)
            }
        }
    }
}

/// An `_ingestion_timestamp` text as microseconds, or why the message is rejected.
fn ingestion_micros(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.timestamp_micros())
        .map_err(|e| format!("_ingestion_timestamp {text:?} is not RFC 3339: {e}"))
}

/// Types each text column as its idcard column says; a value that does not parse, a null in a
/// non-nullable column or a null key gives its message a reason (the first one found).
fn type_columns(
    table: &Table,
    text: Vec<StringArray>,
    reasons: &mut [Option<String>],
) -> Result<Vec<ArrayRef>, ArrowError> {
    let mut typed: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + META.len());
    for (column, text) in table.columns.iter().zip(text) {
        if column.data_type.is_nested() {
            typed.push(super::nested::type_column(column, &text, reasons)?);
            continue;
        }
        let array = type_column(&column.data_type, column.format.as_deref(), &text)?;
        for (i, reason) in reasons.iter_mut().enumerate() {
            if reason.is_some() {
                continue;
            }
            if text.is_valid(i) && array.is_null(i) {
                *reason = Some(format!(
                    "column `{}`: {:?} is not a valid {}",
                    column.name,
                    text.value(i),
                    column.data_type.name()
                ));
            } else if text.is_null(i) && !column.nullable {
                *reason = Some(format!(
                    "column `{}`: null in a non-nullable column",
                    column.name
                ));
            }
        }
        typed.push(array);
    }
    for key in table.key() {
        let at = table
            .columns
            .iter()
            .position(|c| &c.name == key)
            .unwrap_or(0);
        for (i, reason) in reasons.iter_mut().enumerate() {
            if reason.is_none() && typed[at].is_null(i) {
                *reason = Some(format!("key column `{key}` is null"));
            }
        }
    }
    Ok(typed)
}

/// The bronze metadata columns of a batch ([`META`]), shared with its rejects.
struct Meta {
    timestamps: TimestampMicrosecondArray,
    ingested_at: TimestampMicrosecondArray,
    topic: StringArray,
    partitions: Int32Array,
    offsets: Int64Array,
    keys: StringArray,
    lines: Int64Array,
    dates: Date32Array,
}

impl Meta {
    fn of(ids: Ids<'_>, timestamps: Vec<i64>, lines: Vec<Option<i64>>, now: DateTime<Utc>) -> Self {
        let keys = match ids.keys {
            Keys::Every(keys) | Keys::Stored(keys) => keys,
        };
        let n = keys.len();
        let dates = Date32Array::from(
            timestamps
                .iter()
                .map(|us| us.div_euclid(86_400_000_000) as i32)
                .collect::<Vec<_>>(),
        );
        Self {
            timestamps: TimestampMicrosecondArray::from(timestamps).with_timezone("UTC"),
            ingested_at: TimestampMicrosecondArray::from(vec![now.timestamp_micros(); n])
                .with_timezone("UTC"),
            topic: StringArray::from_iter_values(std::iter::repeat_n(ids.topic, n)),
            partitions: ids.partitions,
            offsets: ids.offsets,
            keys,
            lines: Int64Array::from(lines),
            dates,
        }
    }

    /// The columns in [`META`] order, `_key` holding `keys` (rejects keep every key).
    fn columns(&self, keys: StringArray) -> [ArrayRef; 8] {
        [
            Arc::new(self.timestamps.clone()),
            Arc::new(self.ingested_at.clone()),
            Arc::new(self.topic.clone()),
            Arc::new(self.partitions.clone()),
            Arc::new(self.offsets.clone()),
            Arc::new(keys),
            Arc::new(self.lines.clone()),
            Arc::new(self.dates.clone()),
        ]
    }
}

/// The rejected messages, in reject schema. Rejects are rare: their columns are built from the
/// rejected rows only.
fn rejects(
    payload: &dyn Fn(usize) -> String,
    key: &dyn Fn(usize) -> Option<String>,
    reasons: &[Option<String>],
    meta: &Meta,
) -> Result<RecordBatch, ArrowError> {
    let rejected: Vec<usize> = (0..reasons.len())
        .filter(|i| reasons[*i].is_some())
        .collect();
    let indices =
        deltalake::arrow::array::UInt32Array::from_iter_values(rejected.iter().map(|i| *i as u32));
    let take = |array: &dyn Array| deltalake::arrow::compute::take(array, &indices, None);
    let payloads: StringArray = rejected.iter().map(|i| Some(payload(*i))).collect();
    let reason_col: StringArray = rejected.iter().map(|i| reasons[*i].clone()).collect();
    RecordBatch::try_new(
        reject_schema(),
        vec![
            take(&meta.topic)?,
            take(&meta.partitions)?,
            take(&meta.offsets)?,
            Arc::new(rejected.iter().map(|i| key(*i)).collect::<StringArray>()),
            take(&meta.lines)?,
            Arc::new(payloads),
            Arc::new(reason_col),
            take(&meta.ingested_at)?,
        ],
    )
}

/// Casts text to the column type; a value that does not parse becomes null (caught by the caller).
fn type_column(
    data_type: &ColumnType,
    format: Option<&str>,
    text: &StringArray,
) -> Result<ArrayRef, ArrowError> {
    match (data_type, format) {
        (ColumnType::Timestamp, Some(format)) => {
            let values: TimestampMicrosecondArray = text
                .iter()
                .map(|v| {
                    v.and_then(|v| NaiveDateTime::parse_from_str(v, format).ok())
                        .map(|t| t.and_utc().timestamp_micros())
                })
                .collect();
            Ok(Arc::new(values.with_timezone("UTC")))
        }
        (ColumnType::Date, Some(format)) => {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            let values: Date32Array = text
                .iter()
                .map(|v| {
                    v.and_then(|v| NaiveDate::parse_from_str(v, format).ok())
                        .map(|d| (d - epoch).num_days() as i32)
                })
                .collect();
            Ok(Arc::new(values))
        }
        (ColumnType::String, _) => Ok(Arc::new(text.clone())),
        (ColumnType::Bool, _) => {
            let values: BooleanArray = text
                .iter()
                .map(|v| {
                    v.and_then(|v| match v.to_ascii_lowercase().as_str() {
                        "true" | "t" | "1" | "yes" => Some(true),
                        "false" | "f" | "0" | "no" => Some(false),
                        _ => None,
                    })
                })
                .collect();
            Ok(Arc::new(values))
        }
        (other, _) => cast_with_options(
            text,
            &other.arrow(),
            &CastOptions {
                safe: true,
                ..Default::default()
            },
        ),
    }
}
