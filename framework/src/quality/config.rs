//! What users write: suites in expectations/*.yaml, and dbt-style model tests in models/**/*.yml.

use serde::Deserialize;

use crate::idcard::Action;

/// A quality suite: checks on the tables of one layer (expectations/<suite>.yaml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// Suite name, recorded with every result.
    pub suite: String,
    /// Layer whose tables the checks read.
    pub layer: SuiteLayer,
    /// What the suite guards, for people.
    #[serde(default)]
    pub description: String,
    pub checks: Vec<CheckConfig>,
}

/// The layer a suite checks.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SuiteLayer {
    Bronze,
    Silver,
    Gold,
}

impl SuiteLayer {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Silver => "silver",
            Self::Gold => "gold",
        }
    }
}

/// One check; the parameters it needs depend on `expect` (Great Expectations' names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Name recorded with results and quarantined rows (default `<table>.<column>:<expect>`).
    pub name: Option<String>,
    pub expect: Expectation,
    /// Table of the suite's layer (idcard name, or model name for gold). Not for queries.
    pub table: Option<String>,
    pub column: Option<String>,
    /// Columns of `expect_compound_columns_to_be_unique`.
    #[serde(default)]
    pub column_list: Vec<String>,
    /// Columns that must exist (`expect_table_columns_to_match_set`).
    #[serde(default)]
    pub column_set: Vec<String>,
    /// With `column_set`: no other column may exist.
    #[serde(default)]
    pub exact_match: bool,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
    pub value_set: Option<Vec<serde_json::Value>>,
    pub regex: Option<String>,
    /// `expect_table_to_be_fresh`: the latest commit is at most this old.
    pub max_age_hours: Option<f64>,
    /// `expect_query_to_return_no_rows`: SQL over `bronze.<t>`, `silver.<t>`, `gold.<model>`;
    /// every row it returns is a failure.
    pub query: Option<String>,
    /// What a failure does: warn (record), drop (remove the failing rows), quarantine (move
    /// them to `<lake>/quarantine/<layer>/<table>` with the check's name), fail (stop).
    #[serde(default = "default_action")]
    pub action: Action,
}

const fn default_action() -> Action {
    Action::Warn
}

/// The expectations a check can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    ExpectTableColumnsToMatchSet,
    ExpectColumnValuesToNotBeNull,
    ExpectColumnValuesToBeUnique,
    ExpectCompoundColumnsToBeUnique,
    ExpectColumnValuesToBeBetween,
    ExpectColumnValuesToBeInSet,
    ExpectColumnValuesToMatchRegex,
    ExpectTableRowCountToBeBetween,
    ExpectTableToBeFresh,
    ExpectQueryToReturnNoRows,
    /// dbt's `relationships` model test.
    ExpectColumnValuesToBeInRelation,
}

impl Expectation {
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// models/**/*.yml: dbt-style tests on model columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTestsConfig {
    #[serde(default)]
    pub version: Option<u32>,
    pub models: Vec<ModelTests>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTests {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub columns: Vec<ColumnTests>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnTests {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, alias = "data_tests")]
    pub tests: Vec<ModelTest>,
}

/// `unique`, `not_null`, `{accepted_values: {values: [..]}}`,
/// `{relationships: {to: "ref('m')", field: c}}`; each may set `severity: warn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelTest {
    Named(String),
    WithArgs(std::collections::BTreeMap<String, TestArgs>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestArgs {
    #[serde(default)]
    pub values: Vec<serde_json::Value>,
    pub to: Option<String>,
    pub field: Option<String>,
    /// `error` (default: the check fails the run) or `warn`.
    pub severity: Option<String>,
    pub config: Option<TestSeverity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestSeverity {
    pub severity: Option<String>,
}
