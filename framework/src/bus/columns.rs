//! Messages as columns: a producer's bulk format. Every message's value is a flat JSON object
//! of text fields; [`Columns`] holds a batch of them as Arrow columns, split by partition as
//! they are pushed: `_timestamp_ms` (the message time), `_key`, then one text column per value
//! field. The embedded log stores each partition's share as one Arrow IPC block (no JSON
//! written or parsed, a log about half the size); Kafka gets the same messages rendered as
//! JSON ([`Values`]), one per row.
//!
//! Where each key is the given value fields joined by a separator ([`Columns::key_of`]), as a
//! producer's keys are, a block stores only the keys that are not (a broken record's): the key
//! column is otherwise a second copy of those fields, a third of a block's bytes. A block read
//! back keeps its keys so: [`keys`] joins the missing ones for a reader that needs every key,
//! and bronze, which stores only the keys that are not the record's own, takes them as they are
//! ([`keys_declared_as`]).
//!
//! The JSON of a row writes its fields in column order; a null field is `null`, except a field
//! whose name starts with `_` (the message's metadata, such as a broken record's `_raw`), which
//! is written only where set.

use std::borrow::Cow;
use std::sync::Arc;

use deltalake::arrow::array::{Array, AsArray, Int64Array, StringArray, StringBuilder};
use deltalake::arrow::buffer::Buffer;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::ipc::reader::StreamDecoder;
use deltalake::arrow::ipc::writer::StreamWriter;
use deltalake::arrow::record_batch::RecordBatch;

use super::{Batch, partition_for};

/// The message time column, milliseconds since the epoch.
pub const TIMESTAMP: &str = "_timestamp_ms";
/// The key column.
pub const KEY: &str = "_key";
/// Columns before the value's fields.
const HEAD: usize = 2;

/// A batch of messages whose values are flat objects of text fields, as columns per partition.
#[derive(Debug)]
pub struct Columns {
    schema: SchemaRef,
    parts: Vec<Part>,
    len: usize,
}

/// One partition's rows.
#[derive(Debug)]
struct Part {
    timestamps: Vec<i64>,
    keys: StringBuilder,
    fields: Vec<StringBuilder>,
}

impl Part {
    /// Empty parts for `partitions` partitions, with room for `rows` messages among them.
    fn per_partition(fields: usize, partitions: usize, rows: usize) -> Vec<Self> {
        let rows = rows / partitions;
        (0..partitions)
            .map(|_| Self {
                timestamps: Vec::with_capacity(rows),
                keys: StringBuilder::with_capacity(rows, rows * 16),
                fields: (0..fields)
                    .map(|_| StringBuilder::with_capacity(rows, rows * 12))
                    .collect(),
            })
            .collect()
    }
}

impl Columns {
    /// An empty batch of messages with the value fields `fields`, for a topic of `partitions`
    /// partitions, with room for about `rows` messages.
    pub fn new(fields: &[&str], partitions: u32, rows: usize) -> Self {
        let mut schema = vec![
            Field::new(TIMESTAMP, DataType::Int64, false),
            Field::new(KEY, DataType::Utf8, false),
        ];
        schema.extend(fields.iter().map(|f| Field::new(*f, DataType::Utf8, true)));
        Self {
            schema: Arc::new(Schema::new(schema)),
            parts: Part::per_partition(fields.len(), partitions.max(1) as usize, rows),
            len: 0,
        }
    }

    /// Declares that a message's key is normally the value fields `fields` joined by
    /// `separator` (a null field as empty text): blocks then store only the other keys, and
    /// [`Columns::push_own`] pushes a message keyed so without storing its key.
    pub fn key_of(mut self, fields: &[&str], separator: &str) -> Self {
        let positions: Vec<String> = fields
            .iter()
            .filter_map(|f| self.schema.index_of(f).ok())
            .map(|at| at.to_string())
            .collect();
        let metadata = [
            (KEY_FIELDS.to_owned(), positions.join(",")),
            (KEY_SEPARATOR.to_owned(), separator.to_owned()),
        ];
        self.schema = Arc::new(with_nullable_key(&self.schema).with_metadata(metadata.into()));
        self
    }

    /// The same fields and partitions, empty, with room for about `rows` messages like this
    /// batch's: each column sized as it is here, scaled to `rows` with an eighth more, so that
    /// filling it does not outgrow it (a builder that does is copied each time it doubles).
    pub fn empty_like(&self, rows: usize) -> Self {
        let fields = self.schema.fields().len() - HEAD;
        if self.len == 0 {
            return Self {
                schema: self.schema.clone(),
                parts: Part::per_partition(fields, self.parts.len(), rows),
                len: 0,
            };
        }
        let scaled = |n: usize| {
            let n = n * rows / self.len;
            n + n / 8
        };
        let parts = self
            .parts
            .iter()
            .map(|part| {
                let messages = scaled(part.timestamps.len());
                Part {
                    timestamps: Vec::with_capacity(messages),
                    keys: StringBuilder::with_capacity(
                        messages,
                        scaled(part.keys.values_slice().len()),
                    ),
                    fields: part
                        .fields
                        .iter()
                        .map(|f| {
                            StringBuilder::with_capacity(messages, scaled(f.values_slice().len()))
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            schema: self.schema.clone(),
            parts,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a message: its time, key and one cell per value field, in order (missing cells
    /// are null).
    pub fn push<'a>(
        &mut self,
        timestamp_ms: i64,
        key: &str,
        cells: impl IntoIterator<Item = Option<&'a str>>,
    ) {
        self.push_keyed(timestamp_ms, key, Some(key), cells);
    }

    /// Appends a message whose key is its cells of the declared key fields joined by the
    /// declared separator ([`Columns::key_of`]), as the caller made it: the key picks the
    /// partition and is stored as null, as a block stores such a key, so that the encoding does
    /// not join the cells again to find it out.
    pub fn push_own<'a>(
        &mut self,
        timestamp_ms: i64,
        key: &str,
        cells: impl IntoIterator<Item = Option<&'a str>>,
    ) {
        debug_assert!(
            self.schema.metadata().contains_key(KEY_FIELDS),
            "push_own needs a declared key"
        );
        self.push_keyed(timestamp_ms, key, None, cells);
    }

    fn push_keyed<'a>(
        &mut self,
        timestamp_ms: i64,
        key: &str,
        stored: Option<&str>,
        cells: impl IntoIterator<Item = Option<&'a str>>,
    ) {
        let partition = partition_for(key.as_bytes(), self.parts.len() as u32) as usize;
        let part = &mut self.parts[partition];
        part.timestamps.push(timestamp_ms);
        part.keys.append_option(stored);
        let mut cells = cells.into_iter();
        for field in &mut part.fields {
            field.append_option(cells.next().flatten());
        }
        self.len += 1;
    }

    /// Each partition's messages as one record batch (empty where none went), leaving this
    /// batch empty.
    pub fn finish(&mut self) -> Vec<RecordBatch> {
        self.len = 0;
        self.parts
            .iter_mut()
            .map(|part| {
                let mut columns: Vec<Arc<dyn Array>> = vec![
                    Arc::new(Int64Array::from(std::mem::take(&mut part.timestamps))),
                    Arc::new(part.keys.finish()),
                ];
                columns.extend(
                    part.fields
                        .iter_mut()
                        .map(|f| Arc::new(f.finish()) as Arc<dyn Array>),
                );
                RecordBatch::try_new(self.schema.clone(), columns)
                    .expect("the columns follow the schema")
            })
            .collect()
    }
}

/// Whether `batch` has the shape of messages as columns: the time, the key, then text fields.
pub fn check(batch: &RecordBatch) -> Result<(), String> {
    let schema = batch.schema();
    let fields = schema.fields();
    let ok = fields.len() >= HEAD
        && fields[0].name() == TIMESTAMP
        && fields[0].data_type() == &DataType::Int64
        && batch.column(0).null_count() == 0
        && fields[1].name() == KEY
        && fields[1].data_type() == &DataType::Utf8
        && (batch.column(1).null_count() == 0 || declared_key(batch).is_some())
        && fields[HEAD..]
            .iter()
            .all(|f| f.data_type() == &DataType::Utf8);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a block of columns holds {:?}, not `{TIMESTAMP}`, `{KEY}` and text fields",
            fields.iter().map(|f| f.name()).collect::<Vec<_>>()
        ))
    }
}

/// The message times of a batch of messages as columns.
pub fn timestamps(batch: &RecordBatch) -> &Int64Array {
    batch.column(0).as_primitive()
}

/// The keys of a batch of messages as columns. A block read from the log stores only the keys
/// that are not its declared key ([`Columns::key_of`]); those are joined here.
pub fn keys(batch: &RecordBatch) -> Cow<'_, StringArray> {
    let stored: &StringArray = batch.column(1).as_string();
    match declared_key(batch) {
        Some((positions, separator)) if stored.null_count() > 0 => {
            let mut keys =
                StringBuilder::with_capacity(batch.num_rows(), stored.value_data().len());
            let mut joined = String::new();
            let key_columns = text_columns(batch, &positions);
            for row in 0..batch.num_rows() {
                if stored.is_valid(row) {
                    keys.append_value(stored.value(row));
                } else {
                    join_key(&key_columns, &separator, row, &mut joined);
                    keys.append_value(&joined);
                }
            }
            Cow::Owned(keys.finish())
        }
        _ => Cow::Borrowed(stored),
    }
}

/// The key column as stored, when the batch declares its keys as the value fields `fields`
/// joined by `separator`: null where a message's key is exactly that, the key where it is not.
/// A consumer that needs only the keys that differ reads them without joining any.
pub fn keys_declared_as<'a>(
    batch: &'a RecordBatch,
    fields: &[&str],
    separator: &str,
) -> Option<&'a StringArray> {
    let (positions, declared) = declared_key(batch)?;
    let schema = batch.schema_ref();
    let same = declared == separator
        && positions.len() == fields.len()
        && positions
            .iter()
            .zip(fields)
            .all(|(&at, field)| schema.field(at).name() == field);
    same.then(|| batch.column(1).as_string())
}

/// The value fields of a batch of messages as columns: name and column.
pub fn fields(batch: &RecordBatch) -> impl Iterator<Item = (&str, &StringArray)> {
    batch.schema_ref().fields()[HEAD..]
        .iter()
        .zip(&batch.columns()[HEAD..])
        .map(|(field, column)| (field.name().as_str(), column.as_string()))
}

/// Writes rows of one batch as JSON values (see the module's documentation): the field names
/// encoded and the columns looked up once per batch, not per row.
pub struct Values<'a> {
    /// Per value field: `"name":`, whether it is metadata, and its column.
    fields: Vec<(Vec<u8>, bool, &'a StringArray)>,
}

impl<'a> Values<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        let fields = fields(batch)
            .map(|(name, column)| {
                let mut encoded = Vec::with_capacity(name.len() + 3);
                json_string(&mut encoded, name.as_bytes());
                encoded.push(b':');
                (encoded, name.starts_with('_'), column)
            })
            .collect();
        Self { fields }
    }

    /// Appends row `row`'s value.
    pub fn write(&self, out: &mut Vec<u8>, row: usize) {
        out.push(b'{');
        let mut first = true;
        for (name, metadata, column) in &self.fields {
            let set = column.is_valid(row);
            if !set && *metadata {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(name);
            if set {
                json_string(out, column.value(row).as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
        out.push(b'}');
    }
}

/// The rows of `batches` as framed messages with JSON values, in order.
pub fn to_frames(batches: &[RecordBatch]) -> Batch {
    let mut frames = Batch::default();
    for batch in batches {
        let (times, keys) = (timestamps(batch), keys(batch));
        let values = Values::new(batch);
        for row in 0..batch.num_rows() {
            frames.push_with(
                times.value(row),
                |key| key.extend_from_slice(keys.value(row).as_bytes()),
                |value| values.write(value, row),
            );
        }
    }
    frames
}

/// Schema metadata: positions of the fields a key joins, and the separator.
const KEY_FIELDS: &str = "framework.key_fields";
const KEY_SEPARATOR: &str = "framework.key_separator";

/// The declared key of a batch's schema: the columns it joins and the separator.
fn declared_key(batch: &RecordBatch) -> Option<(Vec<usize>, String)> {
    let metadata = batch.schema_ref().metadata();
    let positions = metadata
        .get(KEY_FIELDS)?
        .split(',')
        .map(|p| {
            p.parse().ok().filter(|&p: &usize| {
                p >= HEAD
                    && p < batch.num_columns()
                    && batch.column(p).data_type() == &DataType::Utf8
            })
        })
        .collect::<Option<Vec<usize>>>()?;
    Some((positions, metadata.get(KEY_SEPARATOR)?.clone()))
}

/// Row `row`'s cells of `columns` joined by `separator` (a null cell as empty text), into
/// `out`: how a producer's key is made from its key fields.
pub(crate) fn join_key(columns: &[&StringArray], separator: &str, row: usize, out: &mut String) {
    out.clear();
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        if column.is_valid(row) {
            out.push_str(column.value(row));
        }
    }
}

/// The text columns at `positions` (checked to be text by [`declared_key`]).
fn text_columns<'a>(batch: &'a RecordBatch, positions: &[usize]) -> Vec<&'a StringArray> {
    positions
        .iter()
        .map(|&at| batch.column(at).as_string::<i32>())
        .collect()
}

/// `schema` (its metadata too) with a key column that may hold nulls: the keys a block does not
/// store.
fn with_nullable_key(schema: &Schema) -> Schema {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[1] = Field::new(KEY, DataType::Utf8, true);
    Schema::new(fields).with_metadata(schema.metadata().clone())
}

/// `batch` with its key column replaced by `keys`.
fn with_keys(batch: &RecordBatch, keys: StringArray) -> Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns[1] = Arc::new(keys);
    RecordBatch::try_new(Arc::new(with_nullable_key(batch.schema_ref())), columns)
}

/// `batch` as stored (with a declared key, only the keys that differ from it), and as an Arrow
/// IPC stream of that: the stream decodes to the batch as stored ([`decode`]).
pub(crate) fn encode(batch: &RecordBatch) -> Result<(RecordBatch, Vec<u8>), ArrowError> {
    let stored;
    let batch = match declared_key(batch) {
        Some((positions, separator)) => {
            // A null key is already the declared one ([`Columns::push_own`]); a key that is
            // set may be it too.
            let keys: &StringArray = batch.column(1).as_string();
            let mut joined = String::new();
            let key_columns = text_columns(batch, &positions);
            let mut declared = false;
            let stored_keys: StringArray = (0..batch.num_rows())
                .map(|row| {
                    let key = keys.is_valid(row).then(|| keys.value(row))?;
                    join_key(&key_columns, &separator, row, &mut joined);
                    let own = key == joined;
                    declared |= own;
                    (!own).then_some(key)
                })
                .collect();
            if declared {
                stored = with_keys(batch, stored_keys)?;
                &stored
            } else {
                batch
            }
        }
        None => batch,
    };
    let mut writer = StreamWriter::try_new(
        Vec::with_capacity(batch.get_array_memory_size() + 1024),
        batch.schema_ref(),
    )?;
    writer.write(batch)?;
    Ok((batch.clone(), writer.into_inner()?))
}

/// The one record batch of an Arrow IPC stream, its columns sharing `bytes`, keys as stored.
pub(crate) fn decode(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let mut buffer = Buffer::from_vec(bytes);
    let mut decoder = StreamDecoder::new();
    let mut batch = None;
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer).map_err(|e| e.to_string())? {
            Some(b) if batch.is_none() => batch = Some(b),
            Some(_) => return Err("more than one record batch in a block".into()),
            None => {}
        }
    }
    decoder.finish().map_err(|e| e.to_string())?;
    let batch = batch.ok_or("no record batch in a block")?;
    // The keys stay as stored (null where a message's key is the declared one): [`keys`]
    // joins them for a reader that needs every key.
    check(&batch)?;
    Ok(batch)
}

/// Appends `text` (valid UTF-8) as a JSON string.
fn json_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    // Most cells need no escape: one pass that the compiler vectorises, then one copy.
    if !text.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        out.extend_from_slice(text);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&text[start..i]);
                out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}
