//! The idcard as written by users: stage 1 of the two-stage config (deserialize), see `compile.rs`.
//!
//! Every doc comment here is user documentation: it flows into `idcards/idcard.schema.json`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One ingestion contract: everything the engine needs to move one table from its source to silver.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdcardConfig {
    /// Table name: lower snake case, unique across idcards. Names the bronze, silver, reject and
    /// quarantine tables (`<lake>/<layer>/<table>`).
    pub table: String,
    /// What the table holds, for people.
    #[serde(default)]
    pub description: String,
    /// Team or person answering for the table.
    #[serde(default)]
    pub owner: Option<String>,
    /// Free labels (domain, source system, ...).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where the rows come from.
    pub source: SourceConfig,
    /// The topic the producer writes and bronze reads.
    pub topic: TopicConfig,
    /// Columns in source order, with their types and normalisation.
    pub schema: Vec<ColumnConfig>,
    /// Primary key: one or more schema columns; a composite key lists several.
    pub key: Vec<String>,
    /// How silver absorbs new rows: FULL (each delivery is a complete snapshot that replaces the
    /// table), DIFF (merge on the key: the newest `sequence_by` wins, and on equal `sequence_by`
    /// the message that arrived later) or APPEND (add rows whose key is not there yet; stored
    /// rows never change).
    pub mode: Mode,
    /// Column that orders versions of a key; `_ingestion_timestamp` (the default) is the message
    /// time set by the producer.
    #[serde(default = "default_sequence_by")]
    pub sequence_by: String,
    /// DIFF only: a SQL condition over this table's columns that makes a message the deletion of
    /// its key, e.g. `op = 'D'` (like DLT's `APPLY AS DELETE WHEN`). A delete obeys the same
    /// rule as an update: it removes the stored row only when it is newer (or equal and later).
    /// Its key is remembered (`silver/<table>__tombstones`), so an older version arriving after
    /// the delete is not inserted again.
    #[serde(default)]
    pub delete_when: Option<String>,
    /// Joins to other tables' silver rows that add columns to this table's silver rows.
    #[serde(default)]
    pub enrich: Vec<EnrichConfig>,
    /// Data-quality rules checked on the way into silver, each with its action.
    #[serde(default)]
    pub expectations: Vec<ExpectationConfig>,
    /// Extra silver tables holding the latest row per another key (for example customers per
    /// `customer_unique_id`).
    #[serde(default)]
    pub latest_by: Vec<LatestByConfig>,
    /// Columns holding personal data.
    #[serde(default)]
    pub pii: Vec<PiiConfig>,
    /// Orchestration hints for generated DAGs.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// How `framework serve` exposes the table (by default: every route, every column).
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// How `framework produce` simulates a live stream.
    #[serde(default)]
    pub producer: ProducerConfig,
}

impl IdcardConfig {
    /// The names its enrichments give their columns here (in silver, beside the schema's).
    pub fn enriched_columns(&self) -> Vec<String> {
        self.enrich
            .iter()
            .flat_map(|e| e.columns.iter())
            .map(|c| super::compile::enrich_column_names(c).1)
            .collect()
    }
}

fn default_sequence_by() -> String {
    "_ingestion_timestamp".to_owned()
}

/// Source file and dialect.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// File format.
    pub format: SourceFormat,
    /// File name, relative to the data folder (`--data`).
    pub path: String,
    /// CSV dialect (ignored for JSON).
    #[serde(default)]
    pub csv: CsvDialect,
    /// Source column names to rename to schema column names (fixes misspelt headers such as
    /// `product_name_lenght`).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Source file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Comma-separated values (RFC 4180, quoted fields may span lines).
    Csv,
    /// JSON Lines (one object per line) or one JSON array of objects; values may nest.
    Json,
}

/// CSV dialect.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvDialect {
    /// Field delimiter, one byte.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Quote character, one byte.
    #[serde(default = "default_quote")]
    pub quote: String,
    /// Whether the first record names the columns.
    #[serde(default = "default_true")]
    pub header: bool,
    /// Text encoding; a UTF-8 byte-order mark is always skipped.
    #[serde(default)]
    pub encoding: Encoding,
}

impl Default for CsvDialect {
    fn default() -> Self {
        Self {
            delimiter: default_delimiter(),
            quote: default_quote(),
            header: true,
            encoding: Encoding::Utf8,
        }
    }
}

fn default_delimiter() -> String {
    ",".to_owned()
}
fn default_quote() -> String {
    "\"".to_owned()
}
const fn default_true() -> bool {
    true
}

/// Text encoding of a source file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Encoding {
    /// UTF-8, with or without byte-order mark. Invalid bytes make the row a reject.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
}

/// Topic settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name (by convention `raw_<table>`).
    pub name: String,
    /// Number of partitions (1 to 1024); messages are spread by a hash of the key. Fixed once
    /// the topic exists: bronze and silver keep their offsets per partition.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1024))]
    pub partitions: u32,
}

const fn default_partitions() -> u32 {
    1
}

/// One column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name in bronze and silver.
    pub name: String,
    /// Type: `string`, `int`, `double`, `decimal(p,s)`, `timestamp`, `date`, `bool`, `struct`
    /// (named `fields`) or `list<T>` of any of these (`list<struct>` takes `fields` too).
    #[serde(rename = "type")]
    pub data_type: String,
    /// The fields of a `struct` or `list<struct>` column, each declared like a column (a field
    /// may itself be a struct or a list). A nested timestamp or date is ISO 8601; `format` and
    /// `pad_left` apply to top-level columns only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<ColumnConfig>,
    /// Whether the column may be empty; a null in a non-nullable column makes the message a reject.
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// chrono format of a `timestamp` or `date` column when it is not ISO 8601 (e.g. `%d/%m/%Y %H:%M`).
    #[serde(default)]
    pub format: Option<String>,
    /// Left-pad a string column to this many characters with `pad_char` (zip-code prefixes that
    /// lost their leading zeros), at most 1024.
    #[serde(default)]
    #[schemars(range(max = 1024))]
    pub pad_left: Option<u32>,
    /// Character used by `pad_left`.
    #[serde(default = "default_pad_char")]
    pub pad_char: String,
    /// What the column means, for people.
    #[serde(default)]
    pub description: String,
}

fn default_pad_char() -> String {
    "0".to_owned()
}

/// How silver absorbs new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Each delivery is a complete snapshot that replaces the table: the rows that reached the
    /// topic since the last silver run (latest per key), whatever their `sequence_by`; keys it
    /// lacks disappear. `framework run` produces and refines one delivery at a time. A file
    /// with a header and no rows is refused (it would empty the table).
    #[serde(rename = "FULL")]
    Full,
    /// Merge on the key: a stored row is replaced only by a newer `sequence_by`, or an equal
    /// one that arrived later (higher offset; a key always lands on the same partition), so
    /// late or duplicate messages never overwrite newer data.
    #[serde(rename = "DIFF")]
    Diff,
    /// Insert rows whose key is not in the table yet; never update.
    #[serde(rename = "APPEND")]
    Append,
}

/// A left join to another table's silver rows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Table (idcard name) to join.
    pub from: String,
    /// Join columns: this table's column -> the other table's column.
    pub on: BTreeMap<String, String>,
    /// Columns of the other table to bring; each may be renamed with `name: new_name`.
    pub columns: Vec<EnrichColumn>,
}

/// A column brought by an enrichment join: its name, or a one-entry map `source: target`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnrichColumn {
    /// Keep the other table's name.
    Same(String),
    /// `{other_name: new_name}`.
    Renamed(BTreeMap<String, String>),
}

/// A data-quality rule: exactly one of `not_null`, `in_set`, `between`, `matches`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectationConfig {
    /// Rule name, recorded with quarantined rows (defaults to `<column>_<rule>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Column checked, or a path to a field inside a struct column (`address.zip`).
    pub column: String,
    /// The value must not be null.
    #[serde(default)]
    pub not_null: Option<bool>,
    /// The value, when present, must be one of these.
    #[serde(default)]
    pub in_set: Option<Vec<String>>,
    /// The value, when present, must lie in this closed range.
    #[serde(default)]
    pub between: Option<Range>,
    /// The value, when present, must match this regular expression.
    #[serde(default)]
    pub matches: Option<String>,
    /// What happens to a failing row.
    pub action: Action,
}

/// A closed numeric range; either end may be left open.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
}

/// What happens to a row that fails an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep the row; count the failure in the run summary.
    Warn,
    /// Leave the row out of silver; count it.
    Drop,
    /// Move the row to `<lake>/quarantine/<table>` with the rule's name.
    Quarantine,
    /// Stop the run with an error naming the rule.
    Fail,
}

impl Action {
    /// The name users write.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Drop => "drop",
            Self::Quarantine => "quarantine",
            Self::Fail => "fail",
        }
    }
}

/// An extra silver table with the latest row per another key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestByConfig {
    /// Name of the extra silver table (`<lake>/silver/<name>`).
    pub name: String,
    /// The other key.
    pub key: Vec<String>,
}

/// A column with personal data, encrypted in place at the edge (before the topic): the
/// ciphertext replaces the value in the same string column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// The column (a `string` column of the schema) or a path to a string leaf inside a nested
    /// column: `address.zip` (a struct's field), `contacts[].email` (that field in every element
    /// of a list), `tags[]` (every element of a list of strings).
    pub column: String,
    /// `deterministic` (AES-256-SIV: equal values give equal ciphertexts, so keys, joins, dedup
    /// and MERGE work; leaks equality and frequency) or `randomized` (AES-256-GCM, a random
    /// nonce per value). Key, `latest_by` and enrichment join columns must be deterministic.
    pub mode: crate::pii::PiiMode,
    /// Key domain: the data keys this column is encrypted with. Columns that are joined or
    /// compared with each other must share a domain (and be deterministic).
    #[serde(default = "default_pii_domain")]
    pub domain: String,
    /// Classification, e.g. `location`, `contact`, `identifier`, `free_text`.
    #[serde(default)]
    pub classification: Option<String>,
    /// Crypto-shredding (with `mode: randomized`): the top-level column that names whose data
    /// this is, e.g. `customer_unique_id`. Each subject's values are encrypted with a key of its
    /// own; `framework keys forget --domain D --subject ID` erases it, and every copy of those
    /// values (topic, bronze, silver, gold, old Delta versions) becomes unreadable.
    #[serde(default)]
    pub subject: Option<String>,
}

fn default_pii_domain() -> String {
    "default".to_owned()
}

/// Orchestration hints.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expression of the ingestion DAG.
    #[serde(default)]
    pub cron: Option<String>,
    /// Retries of a failed task.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// How `framework serve` exposes the table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Serve `GET /raw`, `/staging`, `/rejects` and `/quarantine` for the table (and its
    /// `latest_by` tables). When `false` those routes answer 404.
    #[serde(default = "default_true")]
    pub read: bool,
    /// Take records on `POST /ingest` and `/ingest_fast`. When `false` those routes answer 404.
    #[serde(default = "default_true")]
    pub ingest: bool,
    /// Columns reads may return, filter and sort on (schema or enrichment columns); the others
    /// are not served. Bookkeeping columns (`_topic`, `_offset`, ...) stay, except the reject
    /// table's raw `_payload` and, unless every key column is listed, `_key`. Absent: every
    /// column.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            read: true,
            ingest: true,
            columns: None,
        }
    }
}

impl GatewayConfig {
    /// Whether reads may show `column` of the table whose key is `key`.
    pub fn shows(&self, column: &str, key: &[String]) -> bool {
        let Some(columns) = &self.columns else {
            return true;
        };
        match column {
            "_payload" => false,
            "_key" => key.iter().all(|k| columns.contains(k)),
            bookkeeping if bookkeeping.starts_with('_') => true,
            named => columns.iter().any(|c| c == named),
        }
    }
}

/// Live-stream simulation of `framework produce`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// Random pause between messages, in milliseconds: `[min, max]`.
    #[serde(default = "default_delay_ms")]
    pub delay_ms: [u64; 2],
    /// Share of messages sent late (their timestamp moved into the past).
    #[serde(default = "default_late_fraction")]
    pub late_fraction: f64,
    /// How far a late message's timestamp lies in the past, in seconds: `[min, max]`.
    #[serde(default = "default_late_lag_s")]
    pub late_lag_s: [u64; 2],
    /// Share of messages sent twice.
    #[serde(default = "default_duplicate_fraction")]
    pub duplicate_fraction: f64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            delay_ms: default_delay_ms(),
            late_fraction: default_late_fraction(),
            late_lag_s: default_late_lag_s(),
            duplicate_fraction: default_duplicate_fraction(),
        }
    }
}

const fn default_delay_ms() -> [u64; 2] {
    [50, 200]
}
const fn default_late_fraction() -> f64 {
    0.05
}
const fn default_late_lag_s() -> [u64; 2] {
    [60, 300]
}
const fn default_duplicate_fraction() -> f64 {
    0.02
}
