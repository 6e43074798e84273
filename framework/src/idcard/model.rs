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
            .filter(|e| self.column(&e.column).is_none_or(|c| c.pii.is_none()))
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
}

/// How a PII column is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPii {
    pub mode: crate::pii::PiiMode,
    pub domain: String,
}

/// Column types an idcard can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Double,
    Decimal { precision: u8, scale: i8 },
    Timestamp,
    Date,
    Bool,
}

/// What `type:` accepts, for hints.
pub const TYPE_NAMES: &str = "string, int, double, decimal(p,s), timestamp, date, bool";

impl ColumnType {
    /// Parses an idcard type name.
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

    /// The Arrow (and so Delta) type.
    pub fn arrow(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Int => DataType::Int64,
            Self::Double => DataType::Float64,
            Self::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Date => DataType::Date32,
            Self::Bool => DataType::Boolean,
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Int | Self::Double | Self::Decimal { .. })
    }
}

impl ColumnType {
    /// The idcard spelling of the type.
    pub fn name(self) -> String {
        match self {
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
