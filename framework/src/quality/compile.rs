//! Suites and model tests checked against the idcards and models, into runnable [`Check`]s.

use std::path::{Path, PathBuf};

use crate::gold::{Models, Shapes};
use crate::idcard::position::{Pos, PositionIndex};
use crate::idcard::{Action, Diagnostic, Diagnostics, Project, Table};

use super::config::{
    CheckConfig, Expectation, ModelTest, ModelTestsConfig, SuiteConfig, SuiteLayer, TestArgs,
};

/// What a check tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    ColumnsPresent {
        columns: Vec<String>,
        exact: bool,
    },
    NotNull {
        column: String,
    },
    Unique {
        columns: Vec<String>,
    },
    Between {
        column: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    InSet {
        column: String,
        values: Vec<String>,
    },
    Regex {
        column: String,
        pattern: String,
    },
    RowCount {
        min: Option<f64>,
        max: Option<f64>,
    },
    Fresh {
        max_age_hours: f64,
    },
    NoRows {
        query: String,
    },
    InRelation {
        column: String,
        relation: String,
        field: String,
    },
}

impl Rule {
    /// The columns a row-level rule reads (none for a table-level one).
    pub fn columns(&self) -> &[String] {
        match self {
            Rule::NotNull { column }
            | Rule::Between { column, .. }
            | Rule::InSet { column, .. }
            | Rule::Regex { column, .. }
            | Rule::InRelation { column, .. } => std::slice::from_ref(column),
            Rule::Unique { columns } => columns,
            _ => &[],
        }
    }
}

/// One runnable check.
#[derive(Debug, Clone)]
pub struct Check {
    pub suite: String,
    pub name: String,
    pub expectation: Expectation,
    pub layer: SuiteLayer,
    /// The table checked, by its name in the layer (none for a query).
    pub table: Option<String>,
    /// Its relation in SQL (`silver.orders`, `gold.gold_daily_sales`, `staging.stg_orders`).
    pub relation: Option<String>,
    pub column: Option<String>,
    /// Columns that name a failing row in the results' sample.
    pub keys: Vec<String>,
    pub rule: Rule,
    pub action: Action,
    pub file: PathBuf,
    pub pos: Pos,
}

impl Check {
    /// The lake tables the check reads, as `(schema, table)`: its table, and those named in a
    /// query (`silver.orders`) or a relationship.
    pub fn relations(&self) -> Vec<(String, String)> {
        let pattern = regex::Regex::new(
            r"\b(bronze|silver|gold|reject|quarantine)\.([A-Za-z_][A-Za-z0-9_]*)",
        )
        .expect("valid pattern");
        let mut texts: Vec<&str> = self.relation.iter().map(String::as_str).collect();
        match &self.rule {
            Rule::NoRows { query } => texts.push(query),
            Rule::InRelation { relation, .. } => texts.push(relation),
            _ => {}
        }
        let mut out: Vec<(String, String)> = texts
            .iter()
            .flat_map(|t| pattern.captures_iter(t))
            .map(|m| (m[1].to_owned(), m[2].to_owned()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Every check of a project.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub checks: Vec<Check>,
}

impl Checks {
    /// Reads expectations/*.yaml and the model tests in models/**/*.yml.
    pub fn load(dir: &Path, project: &Project, models: &Models) -> Result<Self, Diagnostics> {
        let mut out = Vec::new();
        let mut diagnostics = Vec::new();
        for (file, text) in yaml_files(dir, false).map_err(|e| io_error(dir, &e))? {
            let Some((config, index)) = parse::<SuiteConfig>(&file, &text, &mut diagnostics) else {
                continue;
            };
            for (i, check) in config.checks.iter().enumerate() {
                let place = Place {
                    file: &file,
                    index: &index,
                    pointer: format!("/checks/{i}"),
                };
                match compile_check(&config, check, project, models, &place) {
                    Ok(check) => out.push(check),
                    Err(d) => diagnostics.push(d),
                }
            }
        }
        for (file, text) in yaml_files(&models.dir, true).map_err(|e| io_error(&models.dir, &e))? {
            let Some((config, index)) = parse::<ModelTestsConfig>(&file, &text, &mut diagnostics)
            else {
                continue;
            };
            model_tests(&config, models, &file, &index, &mut out, &mut diagnostics);
        }
        let mut seen = std::collections::BTreeSet::new();
        for check in &out {
            if !seen.insert((&check.suite, &check.name)) {
                diagnostics.push(Diagnostic {
                    file: check.file.clone(),
                    pos: check.pos,
                    field: String::new(),
                    message: format!(
                        "check `{}` is defined twice in suite {}",
                        check.name, check.suite
                    ),
                    hint: Some(
                        "give one of them another `name:` (results are recorded by name)".into(),
                    ),
                });
            }
        }
        if diagnostics.is_empty() {
            Ok(Self { checks: out })
        } else {
            Err(Diagnostics(diagnostics))
        }
    }

    /// Checks the columns each gold check names against its model's planned shape (by
    /// `validate`, once the models are planned): present, and numeric under `between`.
    pub fn check_shapes(&self, shapes: &Shapes) -> Result<(), Diagnostics> {
        let problems: Vec<Diagnostic> = self
            .checks
            .iter()
            .filter(|check| check.layer == SuiteLayer::Gold)
            .filter_map(|check| {
                let table = check.table.as_deref()?;
                let shape = shapes.get(check.relation.as_deref()?)?;
                let columns: Vec<(String, Option<bool>)> = shape
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), Some(f.data_type().is_numeric())))
                    .collect();
                let what = format!("gold table `{table}`");
                let (field, message, hint) = column_problem(&check.rule, &what, &columns, false)?;
                Some(Diagnostic {
                    file: check.file.clone(),
                    pos: check.pos,
                    field: field.into(),
                    message: format!("check `{}`: {message}", check.name),
                    hint: Some(hint),
                })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(problems))
        }
    }
}

struct Place<'a> {
    file: &'a Path,
    index: &'a PositionIndex,
    pointer: String,
}

impl Place<'_> {
    fn error(&self, field: &str, message: String, hint: Option<String>) -> Diagnostic {
        let pointer = if field.is_empty() {
            self.pointer.clone()
        } else {
            format!("{}/{field}", self.pointer)
        };
        Diagnostic {
            file: self.file.to_path_buf(),
            pos: self.index.locate(&pointer),
            field: crate::idcard::diagnostic::field_path(&pointer),
            message,
            hint,
        }
    }
}

/// One check of a suite, compiled: its rule, the table it reads (with its keys) and its name.
fn compile_check(
    suite: &SuiteConfig,
    c: &CheckConfig,
    project: &Project,
    models: &Models,
    place: &Place<'_>,
) -> Result<Check, Diagnostic> {
    let rule = rule_of(c, place)?;
    let (table, relation, keys) = match (&rule, &c.table) {
        (Rule::NoRows { .. }, _) => (None, None, Vec::new()),
        (_, None) => return Err(missing_field(c, place, "table")),
        (_, Some(table)) => {
            let (relation, keys) =
                resolve_table(suite.layer, table, project, models).map_err(|hint| {
                    place.error(
                        "table",
                        format!("unknown {} table `{table}`", suite.layer.name()),
                        Some(hint),
                    )
                })?;
            check_columns(suite.layer, table, &rule, project, place)?;
            (Some(table.clone()), Some(relation), keys)
        }
    };
    refuse_row_actions(suite, c, place)?;
    let name = check_name(c);
    Ok(Check {
        suite: suite.suite.clone(),
        name,
        expectation: c.expect,
        layer: suite.layer,
        table,
        relation,
        column: c.column.clone(),
        keys,
        rule,
        action: c.action,
        file: place.file.to_path_buf(),
        pos: place.index.locate(&place.pointer),
    })
}

/// The error of a check that lacks `field`.
fn missing_field(c: &CheckConfig, place: &Place<'_>, field: &str) -> Diagnostic {
    place.error(
        "",
        format!("{} needs `{field}`", c.expect.name()),
        Some(format!("add `{field}:` to this check")),
    )
}

/// The rule a check states, with its arguments; a missing or unusable one is an error at its
/// field.
fn rule_of(c: &CheckConfig, place: &Place<'_>) -> Result<Rule, Diagnostic> {
    let missing = |field: &str| missing_field(c, place, field);
    let column = || c.column.clone().ok_or_else(|| missing("column"));
    Ok(match c.expect {
        Expectation::ExpectTableColumnsToMatchSet if c.column_set.is_empty() => {
            return Err(missing("column_set"));
        }
        Expectation::ExpectTableColumnsToMatchSet => Rule::ColumnsPresent {
            columns: c.column_set.clone(),
            exact: c.exact_match,
        },
        Expectation::ExpectColumnValuesToNotBeNull => Rule::NotNull { column: column()? },
        Expectation::ExpectColumnValuesToBeUnique => Rule::Unique {
            columns: vec![column()?],
        },
        Expectation::ExpectCompoundColumnsToBeUnique if c.column_list.is_empty() => {
            return Err(missing("column_list"));
        }
        Expectation::ExpectCompoundColumnsToBeUnique => Rule::Unique {
            columns: c.column_list.clone(),
        },
        Expectation::ExpectColumnValuesToBeBetween => Rule::Between {
            column: column()?,
            min: c.min_value,
            max: c.max_value,
        },
        Expectation::ExpectColumnValuesToBeInSet => Rule::InSet {
            column: column()?,
            values: match c.value_set.as_deref() {
                None => return Err(missing("value_set")),
                Some([]) => {
                    return Err(place.error(
                        "value_set",
                        "value_set lists no value: every row would break it".into(),
                        Some(
                            "list the accepted values, e.g. value_set: [delivered, shipped]".into(),
                        ),
                    ));
                }
                Some(values) => values.iter().map(text).collect(),
            },
        },
        Expectation::ExpectColumnValuesToMatchRegex => {
            let pattern = c.regex.clone().ok_or_else(|| missing("regex"))?;
            if let Err(e) = regex::Regex::new(&pattern) {
                return Err(place.error("regex", format!("invalid regular expression: {e}"), None));
            }
            Rule::Regex {
                column: column()?,
                pattern,
            }
        }
        Expectation::ExpectTableRowCountToBeBetween => Rule::RowCount {
            min: c.min_value,
            max: c.max_value,
        },
        Expectation::ExpectTableToBeFresh => Rule::Fresh {
            max_age_hours: c.max_age_hours.ok_or_else(|| missing("max_age_hours"))?,
        },
        Expectation::ExpectQueryToReturnNoRows => {
            let query = c.query.clone().ok_or_else(|| missing("query"))?;
            one_select(&query).map_err(|message| {
                place.error(
                    "query",
                    message,
                    Some("write one SELECT (or WITH ... SELECT) returning the rows that break the rule".into()),
                )
            })?;
            Rule::NoRows { query }
        }
        Expectation::ExpectColumnValuesToBeInRelation => {
            return Err(place.error(
                "expect",
                "expect_column_values_to_be_in_relation is written as a model test".into(),
                Some(
                    "use `relationships: {to: \"ref('model')\", field: column}` in models/**/*.yml"
                        .into(),
                ),
            ));
        }
    })
}

/// Refuses a check that would change rows (drop, quarantine): the idcard decides what happens
/// to a row, and a suite only checks.
fn refuse_row_actions(
    suite: &SuiteConfig,
    c: &CheckConfig,
    place: &Place<'_>,
) -> Result<(), Diagnostic> {
    if !matches!(c.action, Action::Drop | Action::Quarantine) {
        return Ok(());
    }
    let hint = match (suite.layer, &c.table) {
        (SuiteLayer::Silver, Some(table)) => format!(
            "use action: warn or fail; to {} rows, give the rule to the `expectations` of idcard `{table}`",
            c.action.name()
        ),
        (SuiteLayer::Gold, _) => {
            "use action: warn or fail; to leave rows out of a gold table, filter them in its model"
                .into()
        }
        _ => "use action: warn or fail".into(),
    };
    Err(place.error(
        "action",
        format!(
            "a suite checks tables, it does not change them: action `{}` is not allowed here",
            c.action.name()
        ),
        Some(hint),
    ))
}

/// The check's name: its `name`, or the table and column and the expectation.
fn check_name(c: &CheckConfig) -> String {
    c.name.clone().unwrap_or_else(|| {
        let subject = match (&c.table, &c.column) {
            (Some(t), Some(col)) => format!("{t}.{col}"),
            (Some(t), None) => t.clone(),
            _ => "query".into(),
        };
        format!(
            "{subject}:{}",
            c.expect.name().trim_start_matches("expect_")
        )
    })
}

/// Whether `query` is one SELECT (or WITH ... SELECT), in DataFusion's SQL: a check reads
/// tables; `COPY (...) TO 'file'` passed `validate` and `test` wrote the file.
fn one_select(query: &str) -> Result<(), String> {
    use deltalake::datafusion::sql::parser::{DFParser, Statement};
    use deltalake::datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let statements =
        DFParser::parse_sql(query).map_err(|e| format!("the query does not parse: {e}"))?;
    match statements.iter().collect::<Vec<_>>().as_slice() {
        [Statement::Statement(statement)] if matches!(**statement, SqlStatement::Query(_)) => {
            Ok(())
        }
        [_] => Err(
            "the query must be a SELECT: a check reads tables, it does not write or change them"
                .into(),
        ),
        _ => Err(format!(
            "the query holds {} statements; a check runs one SELECT",
            statements.len()
        )),
    }
}

/// The columns a bronze or silver check names are the table's (its idcard's schema, and in
/// silver the enriched ones), and a `between` column of the idcard's is numeric; columns of the
/// engine (`_offset`, ...) and paths into nested values are left to the run. Gold models'
/// columns are known once planned ([`Checks::check_shapes`]).
fn check_columns(
    layer: SuiteLayer,
    table: &str,
    rule: &Rule,
    project: &Project,
    place: &Place<'_>,
) -> Result<(), Diagnostic> {
    let (Some((owner, _)), SuiteLayer::Bronze | SuiteLayer::Silver) =
        (idcard_table(project, table), layer)
    else {
        return Ok(());
    };
    let mut known: Vec<(String, Option<bool>)> = owner
        .columns
        .iter()
        .map(|c| (c.name.clone(), Some(c.data_type.is_numeric())))
        .collect();
    if layer == SuiteLayer::Silver {
        known.extend(
            owner
                .config
                .enriched_columns()
                .into_iter()
                .map(|c| (c, None)),
        );
    }
    let what = format!("{} table `{table}`", layer.name());
    match column_problem(rule, &what, &known, true) {
        Some((field, message, hint)) => Err(place.error(field, message, Some(hint))),
        None => Ok(()),
    }
}

/// The first column `rule` names that `columns` lack, or that is not numeric under `between`:
/// the field naming it, a message and a hint. `columns`: the table's, each with whether it is
/// numeric (`None`: not known here). `engine`: leave the engine's columns (`_offset`, ...) and
/// paths into nested values to the run.
fn column_problem(
    rule: &Rule,
    what: &str,
    columns: &[(String, Option<bool>)],
    engine: bool,
) -> Option<(&'static str, String, String)> {
    // A relationship test's column is left to its run.
    if matches!(rule, Rule::InRelation { .. }) {
        return None;
    }
    let named = rule.columns();
    let field = if named.len() > 1 {
        "column_list"
    } else {
        "column"
    };
    for column in named {
        if engine && (column.starts_with('_') || column.contains('.')) {
            continue;
        }
        match columns.iter().find(|(name, _)| name == column) {
            None => {
                let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
                return Some((
                    field,
                    format!("{what} has no column `{column}`"),
                    format!("its columns: {}", names.join(", ")),
                ));
            }
            Some((_, Some(false))) if matches!(rule, Rule::Between { .. }) => {
                return Some((
                    field,
                    format!("`between` needs a numeric column: `{column}` of {what} is not"),
                    "check a number column; for text, use expect_column_values_to_match_regex or expect_column_values_to_be_in_set".into(),
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// The idcard behind a bronze or silver table (its own, or the one whose `latest_by` it is),
/// and the table's key.
fn idcard_table<'a>(project: &'a Project, table: &str) -> Option<(&'a Table, Vec<String>)> {
    if let Some(t) = project.table(table) {
        return Some((t, t.key().to_vec()));
    }
    project.tables.iter().find_map(|t| {
        let latest = t.config.latest_by.iter().find(|l| l.name == table)?;
        Some((t, latest.key.clone()))
    })
}

/// The relation and key columns of a table of a layer; the error is a hint.
fn resolve_table(
    layer: SuiteLayer,
    table: &str,
    project: &Project,
    models: &Models,
) -> Result<(String, Vec<String>), String> {
    if layer == SuiteLayer::Gold {
        return match models.get(table) {
            Some(m) if m.config.materialized.is_stored() => {
                Ok((m.relation(), m.config.unique_key.clone()))
            }
            _ => Err(format!("gold tables: {}", stored(models))),
        };
    }
    if let Some((_, key)) = idcard_table(project, table) {
        return Ok((format!("{}.{table}", layer.name()), key));
    }
    Err(format!(
        "tables with an idcard: {}",
        project.names().join(", ")
    ))
}

fn model_tests(
    config: &ModelTestsConfig,
    models: &Models,
    file: &Path,
    index: &PositionIndex,
    out: &mut Vec<Check>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for (m, tests) in config.models.iter().enumerate() {
        let place = Place {
            file,
            index,
            pointer: format!("/models/{m}"),
        };
        let Some(model) = models
            .get(&tests.name)
            .filter(|m| m.config.materialized.is_stored())
        else {
            diagnostics.push(place.error(
                "name",
                format!(
                    "`{}` is not a stored model (table or incremental)",
                    tests.name
                ),
                Some(format!("stored models: {}", stored(models))),
            ));
            continue;
        };
        for (c, column) in tests.columns.iter().enumerate() {
            for (t, test) in column.tests.iter().enumerate() {
                let place = Place {
                    file,
                    index,
                    pointer: format!("/models/{m}/columns/{c}/tests/{t}"),
                };
                let (kind, args) = match test {
                    ModelTest::Named(kind) => (kind.as_str(), TestArgs::default()),
                    ModelTest::WithArgs(map) if map.len() == 1 => {
                        let (kind, args) = map.iter().next().expect("one entry");
                        (kind.as_str(), args.clone())
                    }
                    ModelTest::WithArgs(_) => {
                        diagnostics.push(place.error(
                            "",
                            "a test is one name or a one-entry map".into(),
                            None,
                        ));
                        continue;
                    }
                };
                let col = column.name.clone();
                let (expectation, rule) = match kind {
                    "unique" => (
                        Expectation::ExpectColumnValuesToBeUnique,
                        Rule::Unique {
                            columns: vec![col.clone()],
                        },
                    ),
                    "not_null" => (
                        Expectation::ExpectColumnValuesToNotBeNull,
                        Rule::NotNull {
                            column: col.clone(),
                        },
                    ),
                    "accepted_values" => (
                        Expectation::ExpectColumnValuesToBeInSet,
                        Rule::InSet {
                            column: col.clone(),
                            values: args.values.iter().map(text).collect(),
                        },
                    ),
                    "relationships" => {
                        let target = args.to.as_deref().and_then(|to| relation_of(to, models));
                        let (Some(relation), Some(field)) = (target, args.field.clone()) else {
                            diagnostics.push(place.error(
                                kind,
                                "relationships needs `to:` (ref('<stored model>') or source('silver', '<table>')) and `field:`".into(),
                                Some(format!("stored models: {}", stored(models))),
                            ));
                            continue;
                        };
                        (
                            Expectation::ExpectColumnValuesToBeInRelation,
                            Rule::InRelation {
                                column: col.clone(),
                                relation,
                                field,
                            },
                        )
                    }
                    other => {
                        diagnostics.push(place.error(
                            "",
                            format!("unknown model test `{other}`"),
                            Some("tests: unique, not_null, accepted_values, relationships".into()),
                        ));
                        continue;
                    }
                };
                let severity = args
                    .severity
                    .clone()
                    .or(args.config.and_then(|c| c.severity));
                let action = match severity.as_deref() {
                    None | Some("error") => Action::Fail,
                    Some("warn") => Action::Warn,
                    Some(other) => {
                        diagnostics.push(place.error(
                            kind,
                            format!("unknown severity `{other}`"),
                            Some("error or warn".into()),
                        ));
                        continue;
                    }
                };
                out.push(Check {
                    suite: "model_tests".into(),
                    name: format!("{}.{col}:{kind}", model.name),
                    expectation,
                    layer: SuiteLayer::Gold,
                    table: Some(model.name.clone()),
                    relation: Some(model.relation()),
                    column: Some(col),
                    keys: model.config.unique_key.clone(),
                    rule,
                    action,
                    file: file.to_path_buf(),
                    pos: place.index.locate(&place.pointer),
                });
            }
        }
    }
}

/// The relation of `ref('stored_model')` or `source('silver', 'table')`.
fn relation_of(text: &str, models: &Models) -> Option<String> {
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_owned();
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("ref(").and_then(|t| t.strip_suffix(')')) {
        let model = models.get(&unquote(inner))?;
        return model
            .config
            .materialized
            .is_stored()
            .then(|| model.relation());
    }
    let inner = text.strip_prefix("source(")?.strip_suffix(')')?;
    let (layer, table) = inner.split_once(',')?;
    let layer = unquote(layer);
    crate::gold::SOURCE_LAYERS
        .contains(&layer.as_str())
        .then(|| format!("{layer}.{}", unquote(table)))
}

fn stored(models: &Models) -> String {
    models
        .models
        .iter()
        .filter(|m| m.config.materialized.is_stored())
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// `(path, text)` of the YAML files of `dir` (with `recursive`, of its sub-folders too), sorted.
fn yaml_files(dir: &Path, recursive: bool) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                if recursive {
                    stack.push(path);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let text = crate::files::read_text(&path)?;
                out.push((path, text));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn io_error(dir: &Path, err: &std::io::Error) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: dir.to_path_buf(),
        pos: Pos { line: 1, column: 1 },
        field: String::new(),
        message: format!("cannot read: {err}"),
        hint: None,
    }])
}

/// Parses a YAML file into `T`, with positions; problems go to `out`.
fn parse<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<(T, PositionIndex)> {
    let located = |line: usize, column: usize, message: String, hint: Option<String>| Diagnostic {
        file: file.to_path_buf(),
        pos: Pos { line, column },
        field: String::new(),
        message,
        hint,
    };
    let index = match PositionIndex::parse(text) {
        Ok(index) => index,
        Err(err) => {
            out.push(located(
                err.pos.line,
                err.pos.column,
                format!("YAML syntax error: {}", err.message),
                None,
            ));
            return None;
        }
    };
    match serde_yaml_ng::from_str::<T>(text) {
        Ok(value) => Some((value, index)),
        Err(err) => {
            let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
            out.push(located(
                line,
                column,
                err.to_string(),
                Some("see expectations/README.md for the fields of a check".into()),
            ));
            None
        }
    }
}
