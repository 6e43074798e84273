//! The read routes: `GET /raw/{table}` (bronze), `/staging/{table}` (silver), `/curated/{model}`
//! (gold), `/rejects/{table}`, `/quarantine/{table}` and `/quality/results`, run by DataFusion
//! on one pinned Delta version.
//!
//! Query parameters: `columns=a,b`; `<column>=<value>` (equality) and `<column>.gt|gte|lt|lte|ne=
//! <value>` (ranges), each value cast to the column's type; `order_by=a,-b` (`-` descending);
//! `limit` (default 100, or `all`) and `offset`; `as_of_version=N` pins a version. The response
//! carries the version read in `X-Delta-Version`, so the next page can pin it (`as_of_version`)
//! and see the same table whatever commits in between. Formats by `Accept` (or `format=`): JSON
//! (an array of objects, the default), NDJSON, CSV, Arrow IPC stream, Parquet. The body is
//! streamed: each batch DataFusion yields is encoded and sent as it comes ([`Encoder`]), so a
//! whole table (`limit=all`) goes out in bounded memory (a sort still holds what it sorts).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use deltalake::arrow::array::{ArrayRef, StringArray};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::logical_expr::SortExpr;
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};

use deltalake::arrow::{csv, ipc, json};
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::parquet::arrow::ArrowWriter;

use crate::lake::{Lake, Layer, session};

use super::problem::Problem;

/// Rows a request returns when it names no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// The formats a read answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    const ALL: [(Self, &'static str, &'static str); 5] = [
        (Self::Json, "json", "application/json"),
        (Self::Ndjson, "ndjson", "application/x-ndjson"),
        (Self::Csv, "csv", "text/csv"),
        (Self::Arrow, "arrow", "application/vnd.apache.arrow.stream"),
        (Self::Parquet, "parquet", "application/vnd.apache.parquet"),
    ];

    fn media_type(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _, _)| *f == self)
            .map_or("application/json", |(_, _, m)| m)
    }

    /// The format of `format=` or else of the `Accept` header (the first media type we know;
    /// `*/*` or none is JSON).
    fn negotiate(format: Option<&str>, accept: Option<&str>) -> Result<Self, Problem> {
        let names = || {
            Self::ALL
                .iter()
                .map(|(_, n, m)| format!("{n} ({m})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(name) = format {
            return Self::ALL
                .iter()
                .find(|(_, n, _)| *n == name)
                .map(|(f, _, _)| *f)
                .ok_or_else(|| {
                    Problem::not_acceptable(format!("format `{name}` is not one of {}", names()))
                });
        }
        let Some(accept) = accept else {
            return Ok(Self::Json);
        };
        for wanted in accept.split(',') {
            let media = wanted.split(';').next().unwrap_or("").trim();
            if media == "*/*" || media == "application/*" || media.is_empty() {
                return Ok(Self::Json);
            }
            if let Some((f, _, _)) = Self::ALL.iter().find(|(_, _, m)| *m == media) {
                return Ok(*f);
            }
            if media == "text/*" {
                return Ok(Self::Csv);
            }
        }
        Err(Problem::not_acceptable(format!(
            "no format of `Accept: {accept}` is served; formats: {}",
            names()
        ))
        .with_hint("or pass ?format=json|ndjson|csv|arrow|parquet"))
    }
}

/// A read request: the table and its parameters.
pub struct ReadRequest {
    pub layer: Layer,
    pub table: String,
    pub params: Vec<(String, String)>,
    /// The columns the table's idcard lets reads show.
    pub shown: Shown,
    /// Set when the caller holds the table's `pii` scope: its PII columns are shown decrypted.
    pub decrypt: Option<Decrypt>,
}

/// The PII columns a read decrypts, and the keys.
pub struct Decrypt {
    pub keys: std::sync::Arc<crate::pii::Keyring>,
    /// Column -> its domain when deterministic (an equality filter on it is encrypted and
    /// compared with the stored ciphertext), `None` when randomized (no filter on it).
    pub columns: BTreeMap<String, Option<String>>,
    /// Nested columns with PII leaves: their ciphertext leaves are shown decrypted.
    pub nested: Vec<String>,
}

/// Which columns of a table a read may show, select, filter and sort on; the others are as
/// good as absent.
pub enum Shown {
    All,
    Some(Box<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Shown {
    fn shows(&self, column: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some(shows) => shows(column),
        }
    }
}

/// Runs a read and encodes the rows in the negotiated format.
pub async fn read(
    lake: &Lake,
    request: ReadRequest,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let ReadRequest {
        layer,
        table,
        params,
        shown,
        decrypt,
    } = request;
    let (options, filters) = parse_params(params)?;
    let format = Format::negotiate(
        options.format.as_deref(),
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    )?;
    let ctx = session();
    if let Some(decrypt) = &decrypt {
        crate::pii::udf::register(&ctx, &decrypt.keys);
    }
    let internal = |e: &dyn std::fmt::Display| {
        Problem::internal(format!("reading {}/{table}: {e}", layer.dir()))
    };
    let version = register(lake, &ctx, layer, &table, options.version).await?;
    let mut frame = ctx.table("t").await.map_err(|e| internal(&e))?;
    if let Shown::Some(_) = shown {
        let all = frame.schema().as_arrow().clone();
        let names: Vec<&str> = all
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| shown.shows(name))
            .collect();
        frame = frame.select_columns(&names).map_err(|e| internal(&e))?;
    }
    let schema = frame.schema().as_arrow().clone();
    let known = |column: &str| -> Result<(), Problem> {
        if schema.field_with_name(column).is_ok() {
            return Ok(());
        }
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Err(
            Problem::bad_request(format!("{}/{table} has no column `{column}`", layer.dir()))
                .with_hint(format!("columns: {}", names.join(", "))),
        )
    };
    let predicate = filter_predicate(&filters, &schema, decrypt.as_ref(), &known, &internal)?;
    if let Some(predicate) = predicate {
        frame = frame.filter(predicate).map_err(|e| internal(&e))?;
    }
    let sort = sort_exprs(&options.order_by, &known)?;
    if !sort.is_empty() {
        frame = frame.sort(sort).map_err(|e| internal(&e))?;
    }
    if let Some(columns) = &options.columns {
        for c in columns {
            known(c)?;
        }
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        frame = frame.select_columns(&names).map_err(|e| internal(&e))?;
    }
    frame = frame
        .limit(options.offset, options.limit)
        .map_err(|e| internal(&e))?;
    if let Some(decrypt) = &decrypt {
        frame = decrypted(&ctx, frame, decrypt).map_err(|e| internal(&e))?;
    }
    let out_schema: SchemaRef = std::sync::Arc::new(frame.schema().as_arrow().clone());
    if format == Format::Csv {
        only_flat_columns(&out_schema, &table)?;
    }
    let mut batches = frame.execute_stream().await.map_err(|e| internal(&e))?;
    if let Some(decrypt) = decrypt.filter(|d| !d.nested.is_empty()) {
        batches = decrypt_nested(batches, decrypt);
    }
    let (encoder, head) = Encoder::new(format, &out_schema).map_err(|e| internal(&e))?;
    let what = format!("{}/{table}", layer.dir());
    let mut response =
        axum::body::Body::from_stream(streamed(what, head, encoder, batches)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.media_type()),
    );
    h.insert("x-delta-version", HeaderValue::from(version));
    Ok(response)
}

/// A column filter: the column, the SQL operator and the value as given.
type Filter = (String, &'static str, String);

/// Most column filters one read takes: their conjunction is a chain DataFusion plans
/// recursively, and 1 500 of them overflowed a worker's stack (the whole gateway aborted).
pub const MAX_FILTERS: usize = 64;

/// The query parameters: the read's options, and the column filters (`column[.op]=value`).
fn parse_params(params: Vec<(String, String)>) -> Result<(Options, Vec<Filter>), Problem> {
    let mut options = Options::default();
    let mut filters: Vec<Filter> = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "columns" => {
                let mut columns: Vec<String> = Vec::new();
                for column in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if !columns.iter().any(|c| c == column) {
                        columns.push(column.to_owned());
                    }
                }
                if columns.is_empty() {
                    return Err(Problem::bad_request(format!(
                        "`columns={value}`: names no column"
                    ))
                    .with_hint("list them, e.g. `columns=order_id,order_status`, or leave `columns` out for every column"));
                }
                options.columns = Some(columns);
            }
            "order_by" => options.order_by = value,
            "limit" if value == "all" => options.limit = None,
            "limit" => options.limit = Some(number(&name, &value)?),
            "offset" => options.offset = number(&name, &value)?,
            "as_of_version" => options.version = Some(number(&name, &value)? as i64),
            "format" => options.format = Some(value),
            _ => {
                let (column, op) = match name.rsplit_once('.') {
                    Some((column, op @ ("gt" | "gte" | "lt" | "lte" | "ne" | "eq"))) => {
                        (column.to_owned(), op_of(op))
                    }
                    _ => (name.clone(), "="),
                };
                if filters.len() == MAX_FILTERS {
                    return Err(Problem::bad_request(format!(
                        "more than {MAX_FILTERS} column filters in one read"
                    ))
                    .with_hint("filter on fewer columns, or use a range (`column.gte=...&column.lt=...`) instead of many values"));
                }
                filters.push((column, op, value));
            }
        }
    }
    Ok((options, filters))
}

/// Registers the table (at version `as_of`, or its latest) as `t` in `ctx`; returns its version.
async fn register(
    lake: &Lake,
    ctx: &SessionContext,
    layer: Layer,
    table: &str,
    as_of: Option<i64>,
) -> Result<i64, Problem> {
    let registered = lake
        .register_as_of(ctx, layer, table, "t", as_of)
        .await
        .map_err(|e| match as_of {
            Some(_) if matches!(e, crate::lake::Error::Vacuumed { .. }) => Problem::gone(e.to_string())
                .with_hint("the gateway deletes the files a commit replaced --vacuum-retention-s after it (1 hour by default); read again without as_of_version, from the latest version"),
            Some(version) => Problem::not_found(format!(
                "{}/{table} has no version {version}: {e}",
                layer.dir()
            )),
            None => Problem::internal(format!("reading {}/{table}: {e}", layer.dir())),
        })?;
    registered.ok_or_else(|| {
        Problem::not_found(format!("{}/{table} holds no data yet", layer.dir()))
            .with_hint("run the pipeline for it first (`framework run --table ...`)")
    })
}

/// The filters as one predicate (`None` without filters). An equality filter on a
/// deterministic PII column compares with the value's ciphertext; another filter on a PII
/// column cannot be answered.
fn filter_predicate(
    filters: &[Filter],
    schema: &deltalake::arrow::datatypes::Schema,
    decrypt: Option<&Decrypt>,
    known: &impl Fn(&str) -> Result<(), Problem>,
    internal: &impl Fn(&dyn std::fmt::Display) -> Problem,
) -> Result<Option<Expr>, Problem> {
    let mut predicate: Option<Expr> = None;
    for (column, op, value) in filters {
        known(column)?;
        let field = schema.field_with_name(column).expect("checked");
        let sealed;
        let value = match decrypt.and_then(|d| Some((d, d.columns.get(column)?))) {
            None => value,
            Some((d, Some(domain))) if matches!(*op, "=" | "<>") => {
                sealed = d
                    .keys
                    .encrypt(domain, crate::pii::PiiMode::Deterministic, value.as_bytes())
                    .map_err(|e| internal(&e))?;
                &sealed
            }
            Some(_) => {
                return Err(Problem::bad_request(format!(
                    "filter `{column}`: a PII column is stored encrypted; only an equality (or `.ne`) filter on a deterministic one can be answered"
                )));
            }
        };
        let typed = typed_value(value, field.data_type()).map_err(|reason| {
            Problem::bad_request(format!(
                "filter `{column}`: `{value}` is not a {}: {reason}",
                field.data_type()
            ))
        })?;
        let c = col(format!("\"{}\"", column.replace('"', "\"\"")));
        let expr = match *op {
            ">" => c.gt(lit(typed)),
            ">=" => c.gt_eq(lit(typed)),
            "<" => c.lt(lit(typed)),
            "<=" => c.lt_eq(lit(typed)),
            "<>" => c.not_eq(lit(typed)),
            _ => c.eq(lit(typed)),
        };
        predicate = Some(match predicate {
            Some(p) => p.and(expr),
            None => expr,
        });
    }
    Ok(predicate)
}

/// `order_by` (`a,-b`: `-` sorts descending) as sort expressions.
fn sort_exprs(
    order_by: &str,
    known: &impl Fn(&str) -> Result<(), Problem>,
) -> Result<Vec<SortExpr>, Problem> {
    let mut sort: Vec<SortExpr> = Vec::new();
    for key in order_by.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let (name, ascending) = match key.strip_prefix('-') {
            Some(name) => (name, false),
            None => (key, true),
        };
        known(name)?;
        sort.push(col(format!("\"{}\"", name.replace('"', "\"\""))).sort(ascending, !ascending));
    }
    Ok(sort)
}

/// `frame` with its PII columns decrypted by the `pii_decrypt` function of `ctx`.
fn decrypted(
    ctx: &SessionContext,
    frame: DataFrame,
    decrypt: &Decrypt,
) -> deltalake::datafusion::error::Result<DataFrame> {
    use deltalake::datafusion::execution::FunctionRegistry as _;
    let udf = ctx.udf("pii_decrypt")?;
    let exprs: Vec<Expr> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let c = col(format!("\"{}\"", f.name().replace('"', "\"\"")));
            if decrypt.columns.contains_key(f.name()) {
                udf.call(vec![c]).alias(f.name())
            } else {
                c
            }
        })
        .collect();
    frame.select(exprs)
}

/// CSV holds no nested column: a 406 naming them.
fn only_flat_columns(schema: &SchemaRef, table: &str) -> Result<(), Problem> {
    let nested: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| f.data_type().is_nested())
        .map(|f| f.name().as_str())
        .collect();
    if !nested.is_empty() {
        return Err(Problem::not_acceptable(format!(
            "CSV cannot hold the nested columns {} of `{table}`",
            nested.join(", ")
        ))
        .with_hint("ask for JSON, NDJSON, Arrow or Parquet, or leave them out with ?columns="));
    }
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body's chunks: `head`, then each batch as it comes, then the format's end. An error
/// after the first chunk can only cut the body short (the status is sent): it is logged, and
/// the client sees an incomplete body (a JSON array without its `]`, a Parquet file without
/// its footer, an Arrow stream without its end marker).
/// `batches` with the ciphertext leaves of `decrypt`'s nested columns decrypted (a string that
/// is not a value of the keyring stays as it is).
fn decrypt_nested(
    batches: SendableRecordBatchStream,
    decrypt: Decrypt,
) -> SendableRecordBatchStream {
    use deltalake::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::StreamExt;
    let schema = batches.schema();
    let open = move |batch: RecordBatch| -> deltalake::datafusion::error::Result<RecordBatch> {
        let mut columns = batch.columns().to_vec();
        for (i, field) in batch.schema().fields().iter().enumerate() {
            if decrypt.nested.contains(field.name()) {
                columns[i] = crate::pii::cells::map_strings::<deltalake::arrow::error::ArrowError>(
                    &columns[i],
                    &mut |text| {
                        Ok(decrypt
                            .keys
                            .decrypt_any(text)
                            .map(|plain| String::from_utf8_lossy(&plain).into_owned()))
                    },
                )?;
            }
        }
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    };
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        batches.map(move |batch| batch.and_then(&open)),
    ))
}

fn streamed(
    what: String,
    head: Vec<u8>,
    encoder: Encoder,
    batches: SendableRecordBatchStream,
) -> impl futures::Stream<Item = Result<Vec<u8>, BoxError>> + Send {
    use futures::StreamExt;
    let first = futures::stream::once(async move { Ok(head) });
    let rest = futures::stream::unfold((Some(encoder), batches), move |(encoder, mut batches)| {
        let what = what.clone();
        async move {
            let mut encoder = encoder?;
            let chunk = match batches.next().await {
                Some(Ok(batch)) => encoder.batch(&batch),
                Some(Err(e)) => Err(e.into()),
                None => return Some((encoder.finish(), (None, batches))),
            };
            let chunk = chunk.inspect_err(|e| {
                tracing::warn!("reading {what}: {e}; the response is cut short");
            });
            let next = chunk.is_ok().then_some(encoder);
            Some((chunk, (next, batches)))
        }
    });
    first
        .chain(rest)
        .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

/// Encodes rows in a format one batch at a time: each call returns the bytes ready to send.
pub enum Encoder {
    Json(json::ArrayWriter<Vec<u8>>),
    Ndjson(json::LineDelimitedWriter<Vec<u8>>),
    Csv { schema: SchemaRef, header: bool },
    Arrow(ipc::writer::StreamWriter<Vec<u8>>),
    Parquet(ArrowWriter<Vec<u8>>),
}

/// Rows a Parquet row group of a response holds at most: bytes go out once a group is full.
const PARQUET_ROW_GROUP: usize = 65_536;

impl Encoder {
    /// The encoder and the bytes that open the body.
    pub fn new(format: Format, schema: &SchemaRef) -> Result<(Self, Vec<u8>), BoxError> {
        Ok(match format {
            Format::Json => (Self::Json(json::ArrayWriter::new(Vec::new())), Vec::new()),
            Format::Ndjson => (
                Self::Ndjson(json::LineDelimitedWriter::new(Vec::new())),
                Vec::new(),
            ),
            Format::Csv => (
                Self::Csv {
                    schema: schema.clone(),
                    header: false,
                },
                Vec::new(),
            ),
            Format::Arrow => {
                let mut writer = ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                let head = std::mem::take(writer.get_mut());
                (Self::Arrow(writer), head)
            }
            Format::Parquet => {
                let properties = deltalake::parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP))
                    .build();
                let mut writer =
                    ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?;
                let head = std::mem::take(writer.inner_mut());
                (Self::Parquet(writer), head)
            }
        })
    }

    /// The bytes of one batch.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, BoxError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        Ok(match self {
            Self::Csv { header, .. } => {
                let mut out = Vec::new();
                csv::WriterBuilder::new()
                    .with_header(!*header)
                    .build(&mut out)
                    .write(batch)?;
                *header = true;
                out
            }
            // The drained buffers: the writers keep their own state (the JSON array's commas,
            // the footers' byte counts).
            Self::Json(writer) => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Self::Ndjson(writer) => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Self::Arrow(writer) => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Self::Parquet(writer) => {
                writer.write(batch)?;
                std::mem::take(writer.inner_mut())
            }
        })
    }

    /// The bytes that close the body.
    pub fn finish(self) -> Result<Vec<u8>, BoxError> {
        Ok(match self {
            // `[` too when no row came, so an empty result is `[]`.
            Self::Json(mut writer) => {
                writer.finish()?;
                writer.into_inner()
            }
            Self::Ndjson(mut writer) => {
                writer.finish()?;
                writer.into_inner()
            }
            // An empty result still names its columns.
            Self::Csv {
                schema,
                header: false,
            } => {
                let mut out = Vec::new();
                csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out)
                    .write(&RecordBatch::new_empty(schema))?;
                out
            }
            Self::Csv { .. } => Vec::new(),
            Self::Arrow(mut writer) => {
                writer.finish()?;
                std::mem::take(writer.get_mut())
            }
            Self::Parquet(writer) => writer.into_inner()?,
        })
    }
}

#[derive(Debug)]
struct Options {
    columns: Option<Vec<String>>,
    order_by: String,
    /// `None`: every row (`limit=all`).
    limit: Option<usize>,
    offset: usize,
    version: Option<i64>,
    format: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            columns: None,
            order_by: String::new(),
            limit: Some(DEFAULT_LIMIT),
            offset: 0,
            version: None,
            format: None,
        }
    }
}

fn op_of(op: &str) -> &'static str {
    match op {
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        "ne" => "<>",
        _ => "=",
    }
}

/// A whole number of the query (a limit, an offset, a version): SQL and the Delta log count
/// with `i64`, so a larger one is refused here rather than wrapped.
fn number(name: &str, value: &str) -> Result<usize, Problem> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`{name}={value}`: not a whole number from 0 to {}",
                i64::MAX
            ))
        })
}

/// `value` cast to `data_type` as Arrow casts text (an error names why it does not fit).
fn typed_value(
    value: &str,
    data_type: &deltalake::arrow::datatypes::DataType,
) -> Result<ScalarValue, String> {
    let text: ArrayRef = std::sync::Arc::new(StringArray::from(vec![value]));
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = cast_with_options(&text, data_type, &options).map_err(|e| e.to_string())?;
    ScalarValue::try_from_array(&cast, 0).map_err(|e| e.to_string())
}

/// The layer a read route names.
pub fn layer_of(route: &str) -> Option<Layer> {
    Some(match route {
        "raw" => Layer::Bronze,
        "staging" => Layer::Silver,
        "curated" => Layer::Gold,
        "rejects" => Layer::Reject,
        "quarantine" => Layer::Quarantine,
        _ => return None,
    })
}

/// Per route, what it reads, for `/` and the docs.
pub fn routes() -> BTreeMap<&'static str, &'static str> {
    [
        ("raw", "bronze: every message that arrived, typed"),
        ("staging", "silver: one current row per key"),
        ("curated", "gold: the models"),
        (
            "rejects",
            "messages that could not be a bronze row, with the reason",
        ),
        (
            "quarantine",
            "rows a quarantine rule kept out of silver, with the rule",
        ),
    ]
    .into_iter()
    .collect()
}
