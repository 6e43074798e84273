//! The checked model that the engine runs on (stage 2 output).

use std::path::PathBuf;
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::config::{IdcardConfig, Mode};

/// Every table of a project, in dependency order (a table comes after the tables it enriches from).
#[derive(Debug, Clone)]
pub struct Project {
    pub tables: Vec<Table>,
}

impl Project {
    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name() == name)
    }

    /// All table names, in dependency order.
    pub fn names(&self) -> Vec<&str> {
        self.tables.iter().map(Table::name).collect()
    }
}

/// One checked idcard.
#[derive(Debug, Clone)]
pub struct Table {
    pub config: IdcardConfig,
    /// The idcard file it came from.
    pub file: PathBuf,
    pub columns: Vec<Column>,
    /// Tables this one enriches from.
    pub depends_on: Vec<String>,
}

impl Table {
    pub fn name(&self) -> &str {
        &self.config.table
    }
    pub fn topic(&self) -> &str {
        &self.config.topic.name
    }
    pub fn mode(&self) -> Mode {
        self.config.mode
    }
    pub fn key(&self) -> &[String] {
        &self.config.key
    }
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The names of this table's tables in the lake: its own (in every layer), then silver's
    /// extra ones, its deletes (`<table>__tombstones`) and its `latest_by` tables.
    pub fn lake_names(&self) -> Vec<String> {
        self.refined_names()
            .into_iter()
            .chain(self.config.latest_by.iter().map(|l| l.name.clone()))
            .collect()
    }

    /// The names silver commits first, before the `latest_by` tables built from them: the
    /// table and its tombstones.
    pub fn refined_names(&self) -> Vec<String> {
        let name = self.name();
        vec![name.to_owned(), format!("{name}__tombstones")]
    }

    /// Arrow schema of the idcard's own columns (no metadata columns).
    pub fn arrow_fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.arrow(), true))
            .collect()
    }

    /// The expectations silver checks: those on a PII column ran at the edge, on the plaintext.
    pub fn silver_expectations(&self) -> impl Iterator<Item = &super::config::ExpectationConfig> {
        self.config
            .expectations
            .iter()
            .filter(|e| !self.is_pii(&e.column))
    }

    /// Whether `path` (a column or a path into one) is encrypted at the edge.
    pub fn is_pii(&self, path: &str) -> bool {
        self.column(path).is_some_and(|c| c.pii.is_some())
            || self
                .columns
                .iter()
                .any(|c| c.nested_pii.iter().any(|n| n.path == path))
    }

    pub fn arrow_schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(self.arrow_fields()))
    }
}

/// One checked column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub data_type: ColumnType,
    pub nullable: bool,
    /// chrono format for timestamps and dates that are not ISO 8601.
    pub format: Option<String>,
    /// Left-pad to this width with this character.
    pub pad_left: Option<(u32, char)>,
    /// Encrypted in place at the edge (the idcard's `pii:` entry).
    pub pii: Option<ColumnPii>,
    /// Leaves inside a nested column encrypted in place at the edge (`pii:` entries whose
    /// column is a path such as `address.zip` or `contacts[].email`).
    pub nested_pii: Vec<NestedPii>,
}

/// A PII leaf inside a nested column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedPii {
    /// The path as written in the idcard (`contacts[].email`).
    pub path: String,
    /// The steps below the column.
    pub steps: Vec<Step>,
    pub pii: ColumnPii,
}

/// One step of a path below a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Into a struct's field.
    Field(String),
    /// Into every element of a list (`[]`).
    Each,
}

/// A path as written in an idcard (`address.zip`, `contacts[].email`, `tags[]`): the column and
/// the steps below it; `None` when it is not a path's spelling.
pub fn parse_path(text: &str) -> Option<(&str, Vec<Step>)> {
    let mut steps = Vec::new();
    let mut column = None;
    for segment in text.split('.') {
        let mut name = segment;
        let mut each = 0;
        while let Some(rest) = name.strip_suffix("[]") {
            name = rest;
            each += 1;
        }
        if name.is_empty() || name.contains(['[', ']']) {
            return None;
        }
        match column {
            None => column = Some(name),
            Some(_) => steps.push(Step::Field(name.to_owned())),
        }
        steps.extend(std::iter::repeat_n(Step::Each, each));
    }
    Some((column?, steps))
}

/// The type at `steps` below a column of type `root`, or why the path does not fit it.
pub fn type_at<'a>(root: &'a ColumnType, steps: &[Step]) -> Result<&'a ColumnType, String> {
    let mut at = root;
    for step in steps {
        at = match (step, at) {
            (Step::Field(name), ColumnType::Struct(fields)) => {
                &fields
                    .iter()
                    .find(|f| &f.name == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                        format!("no field `{name}` (fields: {})", names.join(", "))
                    })?
                    .data_type
            }
            (Step::Each, ColumnType::List(item)) => item,
            (Step::Field(name), other) => {
                return Err(format!(
                    "`.{name}` reaches into {}, not a struct",
                    other.name()
                ));
            }
            (Step::Each, other) => {
                return Err(format!("`[]` reaches into {}, not a list", other.name()));
            }
        };
    }
    Ok(at)
}

/// How a PII column is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPii {
    pub mode: crate::pii::PiiMode,
    pub domain: String,
    /// The column naming the subject whose key encrypts the value (crypto-shredding).
    pub subject: Option<String>,
}

/// Column types an idcard can declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Double,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Timestamp,
    Date,
    Bool,
    /// Named fields (`type: struct` with `fields:`).
    Struct(Arc<[NestedField]>),
    /// Values of one type (`type: list<...>`); an element may be null.
    List(Arc<ColumnType>),
}

/// A field of a struct type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedField {
    pub name: String,
    pub data_type: ColumnType,
    pub nullable: bool,
}

/// What `type:` accepts, for hints.
pub const TYPE_NAMES: &str =
    "string, int, double, decimal(p,s), timestamp, date, bool, struct (with `fields:`), list<...>";

impl ColumnType {
    /// Parses an idcard type name of a scalar type.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        Some(match text {
            "string" => Self::String,
            "int" => Self::Int,
            "double" => Self::Double,
            "timestamp" => Self::Timestamp,
            "date" => Self::Date,
            "bool" => Self::Bool,
            _ => {
                let inner = text.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, s) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = s.trim().parse().ok()?;
                if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                    return None;
                }
                Self::Decimal { precision, scale }
            }
        })
    }

    /// The Arrow (and so Delta) type. Nested fields are nullable in Arrow: bronze checks the
    /// idcard's nullability and rejects the message that breaks it.
    pub fn arrow(&self) -> DataType {
        match self {
            Self::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| Field::new(&f.name, f.data_type.arrow(), true))
                    .collect(),
            ),
            Self::List(item) => DataType::List(Arc::new(Field::new("item", item.arrow(), true))),
            Self::String => DataType::Utf8,
            Self::Int => DataType::Int64,
            Self::Double => DataType::Float64,
            Self::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Date => DataType::Date32,
            Self::Bool => DataType::Boolean,
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, Self::Int | Self::Double | Self::Decimal { .. })
    }
}

impl ColumnType {
    /// Levels of lists and structs: 0 for a scalar.
    pub fn depth(&self) -> usize {
        match self {
            Self::Struct(fields) => {
                1 + fields
                    .iter()
                    .map(|f| f.data_type.depth())
                    .max()
                    .unwrap_or(0)
            }
            Self::List(item) => 1 + item.depth(),
            _ => 0,
        }
    }

    /// Whether the type holds other values (struct or list).
    pub fn is_nested(&self) -> bool {
        matches!(self, Self::Struct(_) | Self::List(_))
    }

    /// The idcard spelling of the type (a struct with its fields).
    pub fn name(&self) -> String {
        match self {
            Self::Struct(fields) => format!(
                "struct<{}>",
                fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name, f.data_type.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::List(item) => format!("list<{}>", item.name()),
            Self::String => "string".into(),
            Self::Int => "int".into(),
            Self::Double => "double".into(),
            Self::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            Self::Timestamp => "timestamp".into(),
            Self::Date => "date".into(),
            Self::Bool => "bool".into(),
        }
    }
}
