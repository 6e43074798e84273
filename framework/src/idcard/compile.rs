//! Stage 2: read idcard files, check them against the JSON Schema and each other, and build the
//! [`Project`] model. Every problem in every file is collected before failing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use jsonschema::error::ValidationErrorKind;

use super::config::{EnrichColumn, IdcardConfig};
use super::diagnostic::{Diagnostic, Diagnostics, field_path};
use super::model::{Column, ColumnType, Project, TYPE_NAMES, Table};
use super::position::{Pos, PositionIndex, escape};

/// The idcard JSON Schema shipped in the repo; a test keeps it equal to the Rust types.
pub const SCHEMA_JSON: &str = include_str!("../../../idcards/idcard.schema.json");

/// Metadata columns every message carries, usable as `sequence_by`.
pub const MESSAGE_COLUMNS: &[&str] = &["_ingestion_timestamp"];

/// Reads and checks every `*.yaml` / `*.yml` idcard in `dir`.
pub fn load_dir(dir: &Path) -> Result<Project, Diagnostics> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(err) => {
            return Err(Diagnostics(vec![Diagnostic {
                file: dir.to_path_buf(),
                pos: Pos { line: 1, column: 1 },
                field: String::new(),
                message: format!("cannot read the idcard folder: {err}"),
                hint: Some("pass the folder holding the *.yaml idcards with --idcards".into()),
            }]));
        }
    };
    files.sort();
    let mut sources = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(err) => {
                return Err(Diagnostics(vec![Diagnostic {
                    file,
                    pos: Pos { line: 1, column: 1 },
                    field: String::new(),
                    message: format!("cannot read: {err}"),
                    hint: Some("idcards must be UTF-8 text".into()),
                }]));
            }
        }
    }
    compile(&sources)
}

/// Checks idcards given as `(file, text)` pairs.
pub fn compile(sources: &[(PathBuf, String)]) -> Result<Project, Diagnostics> {
    let mut diagnostics = Vec::new();
    let mut parsed = Vec::new();
    for (file, text) in sources {
        if let Some((config, index)) = parse_one(file, text, &mut diagnostics) {
            parsed.push((file.clone(), config, index));
        }
    }
    let tables = check_project(&parsed, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(Project { tables })
    } else {
        Err(Diagnostics(diagnostics))
    }
}

fn schema_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA_JSON).expect("shipped idcard schema is JSON");
        jsonschema::validator_for(&schema).expect("shipped idcard schema is a valid JSON Schema")
    })
}

/// Stage 1 for one file: YAML syntax, JSON Schema, then serde into the typed config.
fn parse_one(
    file: &Path,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<(IdcardConfig, PositionIndex)> {
    let diag = |pos: Pos, field: String, message: String, hint: Option<String>| Diagnostic {
        file: file.to_path_buf(),
        pos,
        field,
        message,
        hint,
    };
    let index = match PositionIndex::parse(text) {
        Ok(index) => index,
        Err(err) => {
            out.push(diag(
                err.pos,
                String::new(),
                format!("YAML syntax error: {}", err.message),
                Some("check indentation, colons and quotes around this place".into()),
            ));
            return None;
        }
    };
    let value: serde_json::Value = match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            // serde_yaml_ng gives no place for a second document: point at its marker.
            let (pos, hint) = match err.location() {
                Some(l) => (
                    Pos {
                        line: l.line(),
                        column: l.column(),
                    },
                    None,
                ),
                None => (
                    second_document(text).unwrap_or(Pos { line: 1, column: 1 }),
                    Some("an idcard is one YAML document: remove this `---` or `...` line".into()),
                ),
            };
            out.push(diag(
                pos,
                String::new(),
                format!("invalid YAML: {err}"),
                hint,
            ));
            return None;
        }
    };
    let before = out.len();
    for error in schema_validator().iter_errors(&value) {
        let pointer = error.instance_path().as_str().to_owned();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    let field = format!("{pointer}/{}", escape(name));
                    out.push(diag(
                        index.locate(&field),
                        field_path(&field),
                        format!("unknown field `{name}`"),
                        Some(known_fields_hint(&pointer, &value)),
                    ));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(diag(
                    index.locate_value(&pointer),
                    field_path(&pointer),
                    format!("missing required field `{name}`"),
                    Some(format!(
                        "add `{name}:` here (see idcards/idcard.schema.json)"
                    )),
                ));
            }
            ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::Enum { .. }
                if !allowed_values(&pointer).is_empty() =>
            {
                out.push(diag(
                    index.locate_value(&pointer),
                    field_path(&pointer),
                    format!("{} is not a valid value", error.instance()),
                    Some(format!(
                        "use one of {}",
                        allowed_values(&pointer).join(", ")
                    )),
                ))
            }
            ValidationErrorKind::Enum { options } => out.push(diag(
                index.locate_value(&pointer),
                field_path(&pointer),
                format!("{} is not a valid value", error.instance()),
                Some(format!("use one of {options}")),
            )),
            _ => out.push(diag(
                index.locate_value(&pointer),
                field_path(&pointer),
                error.to_string(),
                None,
            )),
        }
    }
    if out.len() > before {
        return None;
    }
    match serde_yaml_ng::from_str::<IdcardConfig>(text) {
        Ok(config) => Some((config, index)),
        Err(err) => {
            let pos = err
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or_default();
            out.push(diag(pos, String::new(), err.to_string(), None));
            None
        }
    }
}

fn schema_root() -> &'static serde_json::Value {
    static ROOT: OnceLock<serde_json::Value> = OnceLock::new();
    ROOT.get_or_init(|| serde_json::from_str(SCHEMA_JSON).expect("shipped idcard schema is JSON"))
}

/// The schema node describing the value at `pointer` of an idcard.
fn schema_node(pointer: &str) -> &'static serde_json::Value {
    let root = schema_root();
    let mut node = root;
    for segment in pointer.split('/').skip(1) {
        node = resolve(root, node);
        node = if segment.chars().all(|c| c.is_ascii_digit()) {
            node.get("items").unwrap_or(node)
        } else {
            node.get("properties")
                .and_then(|p| p.get(segment))
                .unwrap_or(node)
        };
    }
    resolve(root, node)
}

/// "valid fields here are: a, b, c" for the object at `pointer`.
fn known_fields_hint(pointer: &str, _value: &serde_json::Value) -> String {
    let names: Vec<&str> = schema_node(pointer)
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    format!("valid fields here are: {}", names.join(", "))
}

/// The allowed values of an enumeration at `pointer` (`oneOf` of `const`s, or `enum`).
fn allowed_values(pointer: &str) -> Vec<String> {
    let node = schema_node(pointer);
    let mut values: Vec<String> = node
        .get("oneOf")
        .and_then(|o| o.as_array())
        .map(|alternatives| {
            alternatives
                .iter()
                .filter_map(|a| {
                    a.get("const")
                        .or_else(|| a.get("enum").and_then(|e| e.get(0)))
                })
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(list) = node.get("enum").and_then(|e| e.as_array()) {
        values.extend(list.iter().map(ToString::to_string));
    }
    values
}

/// Follows `$ref` (and `anyOf` wrappers of optional fields) to the described object.
fn resolve<'a>(root: &'a serde_json::Value, node: &'a serde_json::Value) -> &'a serde_json::Value {
    let mut node = node;
    for _ in 0..8 {
        if let Some(reference) = node.get("$ref").and_then(|r| r.as_str()) {
            let name = reference.rsplit('/').next().unwrap_or_default();
            match root.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => node = target,
                None => break,
            }
        } else if let Some(first) = node
            .get("anyOf")
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().find(|s| s.get("$ref").is_some()))
        {
            node = first;
        } else {
            break;
        }
    }
    node
}

/// Semantic checks across idcards; returns the tables in dependency order.
fn check_project(
    parsed: &[(PathBuf, IdcardConfig, PositionIndex)],
    out: &mut Vec<Diagnostic>,
) -> Vec<Table> {
    let by_name: HashMap<&str, &IdcardConfig> = parsed
        .iter()
        .map(|(_, c, _)| (c.table.as_str(), c))
        .collect();
    let mut seen_tables: HashMap<&str, &Path> = HashMap::new();
    let mut seen_topics: HashMap<&str, &str> = HashMap::new();
    let mut tables = Vec::new();
    for (file, config, index) in parsed {
        let mut diag = |pointer: &str, message: String, hint: Option<String>| {
            out.push(Diagnostic {
                file: file.clone(),
                pos: index.locate(pointer),
                field: field_path(pointer),
                message,
                hint,
            })
        };
        check_unique_names(config, file, &mut seen_tables, &mut seen_topics, &mut diag);
        let (mut columns, names) = compile_columns(config, &mut diag);
        check_pii(config, &mut columns, &mut diag);
        check_keys(config, &columns, &names, &mut diag);
        check_source(config, &names, &mut diag);
        check_delete_when(config, &mut diag);
        check_schedule(config, &mut diag);
        check_producer(config, &mut diag);
        let depends_on = check_enrichment(config, &columns, &names, &by_name, &mut diag);
        check_expectations(config, &columns, &mut diag);
        check_gateway_columns(config, &names, &mut diag);
        tables.push(Table {
            config: config.clone(),
            file: file.clone(),
            columns,
            depends_on,
        });
    }
    order_by_dependencies(tables, parsed, out)
}

/// A silver table's name (a table's, or a `latest_by` table's) and a topic used once only:
/// two tables of one name would write one Delta table.
fn check_unique_names<'a>(
    config: &'a IdcardConfig,
    file: &'a Path,
    seen_tables: &mut HashMap<&'a str, &'a Path>,
    seen_topics: &mut HashMap<&'a str, &'a str>,
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    let names = std::iter::once(("/table".to_owned(), config.table.as_str())).chain(
        config
            .latest_by
            .iter()
            .enumerate()
            .map(|(i, latest)| (format!("/latest_by/{i}/name"), latest.name.as_str())),
    );
    for (at, name) in names {
        if let Some(other) = seen_tables.insert(name, file) {
            diag(
                &at,
                format!(
                    "silver table `{name}` is already defined in {}",
                    other.display()
                ),
                Some(
                    "table and latest_by names must be unique across idcards: each is a silver table"
                        .into(),
                ),
            );
        }
    }
    if let Some(other) = seen_topics.insert(&config.topic.name, &config.table) {
        diag(
            "/topic/name",
            format!(
                "topic `{}` is already used by table `{other}`",
                config.topic.name
            ),
            Some("give each table its own topic, e.g. raw_<table>".into()),
        );
    }
}

/// The schema's columns with their types, and their names (a duplicate is reported).
fn compile_columns<'a>(
    config: &'a IdcardConfig,
    diag: &mut impl FnMut(&str, String, Option<String>),
) -> (Vec<Column>, HashSet<&'a str>) {
    let mut columns = Vec::new();
    let mut names = HashSet::new();
    for (i, column) in config.schema.iter().enumerate() {
        if !names.insert(column.name.as_str()) {
            diag(
                &format!("/schema/{i}/name"),
                format!("duplicate column `{}`", column.name),
                None,
            );
        }
        let Some(data_type) = column_type(column, &format!("/schema/{i}"), diag) else {
            continue;
        };
        let pad_char = column.pad_char.chars().next().unwrap_or('0');
        if column.pad_char.chars().count() != 1 {
            diag(
                &format!("/schema/{i}/pad_char"),
                format!(
                    "pad_char must be one character, {:?} is {}",
                    column.pad_char,
                    column.pad_char.chars().count()
                ),
                Some("e.g. pad_char: '0'".into()),
            );
        }
        if let Some(format) = &column.format
            && chrono::format::StrftimeItems::new(format)
                .any(|item| matches!(item, chrono::format::Item::Error))
        {
            diag(
                &format!("/schema/{i}/format"),
                format!("{format:?} is not a chrono format: every value would be rejected"),
                Some(
                    "use chrono's strftime specifiers, e.g. format: '%d/%m/%Y %H:%M' (https://docs.rs/chrono/latest/chrono/format/strftime)"
                        .into(),
                ),
            );
        }
        if column.pad_left.is_some() && data_type != ColumnType::String {
            diag(
                &format!("/schema/{i}/pad_left"),
                format!(
                    "pad_left applies to string columns, `{}` is {}",
                    column.name, column.data_type
                ),
                Some("declare the column as `type: string`".into()),
            );
        }
        columns.push(Column {
            name: column.name.clone(),
            data_type,
            nullable: column.nullable,
            format: column.format.clone(),
            pad_left: column.pad_left.map(|w| (w, pad_char)),
            pii: None,
            nested_pii: Vec::new(),
        });
    }
    (columns, names)
}

/// The key, the `latest_by` keys and the sequence column name scalar columns of the table.
fn check_keys(
    config: &IdcardConfig,
    columns: &[Column],
    names: &HashSet<&str>,
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    if config.key.is_empty() {
        diag(
            "/key",
            "the key names no column".into(),
            Some("list the primary-key columns".into()),
        );
    }
    for (i, key) in config.key.iter().enumerate() {
        check_scalar_column(
            config,
            columns,
            key,
            "key column",
            &format!("/key/{i}"),
            diag,
        );
    }
    if !names.contains(config.sequence_by.as_str())
        && !MESSAGE_COLUMNS.contains(&config.sequence_by.as_str())
    {
        diag(
            "/sequence_by",
            format!(
                "sequence column `{}` is not in the schema",
                config.sequence_by
            ),
            Some(format!(
                "use `_ingestion_timestamp` or one of: {}",
                column_list(config)
            )),
        );
    }
    for (i, latest) in config.latest_by.iter().enumerate() {
        if latest.key.is_empty() {
            diag(
                &format!("/latest_by/{i}/key"),
                format!("latest_by table `{}`: the key names no column", latest.name),
                Some("list the columns that pick one row each, e.g. [customer_unique_id]".into()),
            );
        }
        for (j, key) in latest.key.iter().enumerate() {
            let at = format!("/latest_by/{i}/key/{j}");
            check_scalar_column(config, columns, key, "column", &at, diag);
        }
    }
}

/// The source's renames land on schema columns and its CSV separators are one byte each.
fn check_source(
    config: &IdcardConfig,
    names: &HashSet<&str>,
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    for (i, rename) in config.source.rename.values().enumerate() {
        if !names.contains(rename.as_str()) {
            diag(
                "/source/rename",
                format!("rename target `{rename}` (entry {i}) is not in the schema"),
                use_one_of(config),
            );
        }
    }
    for (field, value) in [
        ("delimiter", &config.source.csv.delimiter),
        ("quote", &config.source.csv.quote),
    ] {
        if value.len() != 1 {
            diag(
                &format!("/source/csv/{field}"),
                format!("{field} must be one byte, got {value:?}"),
                Some("e.g. \",\" or \";\"".into()),
            );
        }
    }
}

/// `delete_when`: a non-empty condition, on a DIFF table.
fn check_delete_when(config: &IdcardConfig, diag: &mut impl FnMut(&str, String, Option<String>)) {
    if let Some(condition) = &config.delete_when {
        if config.mode != super::config::Mode::Diff {
            diag(
                "/delete_when",
                "delete_when applies to DIFF tables only".into(),
                Some("use `mode: DIFF`, or remove `delete_when`".into()),
            );
        } else if condition.trim().is_empty() {
            diag(
                "/delete_when",
                "delete_when is empty".into(),
                Some("a SQL condition over the table's columns, e.g. `op = 'D'`".into()),
            );
        } else if let Err(problem) = parse_condition(condition) {
            diag(
                "/delete_when",
                format!("delete_when `{condition}` is not a SQL condition: {problem}"),
                Some("a SQL condition over the table's columns, e.g. `op = 'D'`".into()),
            );
        }
    }
}

/// Whether `condition` parses as one SQL expression (as silver's query will read it), with
/// nothing after it.
fn parse_condition(condition: &str) -> Result<(), String> {
    use deltalake::datafusion::sql::sqlparser::{
        dialect::GenericDialect, parser::Parser, tokenizer::Token,
    };
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(condition)
        .map_err(|e| e.to_string())?;
    parser.parse_expr().map_err(|e| e.to_string())?;
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        after => Err(format!("unexpected `{after}` after the condition")),
    }
}

/// Longest lateness `producer.late_lag_s` may simulate: ten years.
const LATE_LAG_MAX_S: u64 = 10 * 365 * 24 * 3600;
/// Longest pause `producer.delay_ms` may make between messages: one minute.
const DELAY_MAX_MS: u64 = 60_000;

/// The producer's simulation: shares between 0 and 1, ranges `[min, max]` within bounds (a
/// lag past the calendar would move a message's time out of any date).
fn check_producer(config: &IdcardConfig, diag: &mut impl FnMut(&str, String, Option<String>)) {
    let producer = &config.producer;
    for (field, share) in [
        ("late_fraction", producer.late_fraction),
        ("duplicate_fraction", producer.duplicate_fraction),
    ] {
        if !(0.0..=1.0).contains(&share) {
            diag(
                &format!("/producer/{field}"),
                format!("{field} {share} is not a share between 0 and 1"),
                Some("e.g. 0.05 for 5% of the messages".into()),
            );
        }
    }
    for (field, [min, max], bound, unit, example) in [
        (
            "late_lag_s",
            producer.late_lag_s,
            LATE_LAG_MAX_S,
            "seconds",
            "[60, 300]",
        ),
        (
            "delay_ms",
            producer.delay_ms,
            DELAY_MAX_MS,
            "milliseconds",
            "[50, 200]",
        ),
    ] {
        if min > max || max > bound {
            diag(
                &format!("/producer/{field}"),
                format!(
                    "{field} [{min}, {max}] is not a range [min, max] of at most {bound} {unit}"
                ),
                Some(format!("e.g. {field}: {example}")),
            );
        }
    }
}

/// The schedule's cron expression parses.
fn check_schedule(config: &IdcardConfig, diag: &mut impl FnMut(&str, String, Option<String>)) {
    if let Some(cron) = config.schedule.as_ref().and_then(|s| s.cron.as_deref())
        && let Err(problem) = check_cron(cron)
    {
        diag(
            "/schedule/cron",
            format!("`{cron}` is not a cron expression: {problem}"),
            Some(
                "five fields: minute hour day-of-month month day-of-week, e.g. `0 6 * * *`, \
                 or @hourly, @daily, @weekly, @monthly, @yearly"
                    .into(),
            ),
        );
    }
}

/// Each enrichment joins a known table on columns both sides have (encrypted alike) and adds
/// columns that clash with none of the schema's; returns the tables it depends on.
fn check_enrichment(
    config: &IdcardConfig,
    columns: &[Column],
    names: &HashSet<&str>,
    by_name: &HashMap<&str, &IdcardConfig>,
    diag: &mut impl FnMut(&str, String, Option<String>),
) -> Vec<String> {
    let mut depends_on = Vec::new();
    let mut brought: HashSet<String> = HashSet::new();
    for (i, enrich) in config.enrich.iter().enumerate() {
        if enrich.from == config.table {
            diag(
                &format!("/enrich/{i}/from"),
                format!("table `{}` enriches from itself", config.table),
                Some("join another table; a table's own columns are already in its rows".into()),
            );
            continue;
        }
        let Some(other) = by_name.get(enrich.from.as_str()) else {
            let mut known: Vec<&str> = by_name.keys().copied().collect();
            known.sort_unstable();
            diag(
                &format!("/enrich/{i}/from"),
                format!("enrichment joins unknown table `{}`", enrich.from),
                Some(format!("known tables: {}", known.join(", "))),
            );
            continue;
        };
        if !depends_on.contains(&enrich.from) {
            depends_on.push(enrich.from.clone());
        }
        let other_names: HashSet<&str> = other.schema.iter().map(|c| c.name.as_str()).collect();
        for (mine, theirs) in &enrich.on {
            if pii_of(config, mine) != pii_of(other, theirs) {
                diag(
                    &format!("/enrich/{i}/on/{}", escape(mine)),
                    format!(
                        "join column `{mine}` and `{}.{theirs}` are not encrypted alike, so no row would match",
                        enrich.from
                    ),
                    Some("give both the same `pii:` entry (mode: deterministic, one domain), or neither".into()),
                );
            }
            check_scalar_column(
                config,
                columns,
                mine,
                "join column",
                &format!("/enrich/{i}/on/{}", escape(mine)),
                diag,
            );
            if !other_names.contains(theirs.as_str()) {
                diag(
                    &format!("/enrich/{i}/on/{}", escape(mine)),
                    format!("join column `{theirs}` is not in table `{}`", enrich.from),
                    None,
                );
            }
        }
        for (j, column) in enrich.columns.iter().enumerate() {
            if let EnrichColumn::Renamed(map) = column
                && map.len() != 1
            {
                diag(
                    &format!("/enrich/{i}/columns/{j}"),
                    format!(
                        "a renamed column is a one-entry map `source: target`, this one has {} entries",
                        map.len()
                    ),
                    Some(
                        "give each renamed column its own list item: `- {customer_city: city}`"
                            .into(),
                    ),
                );
                continue;
            }
            let (source, target) = enrich_column_names(column);
            if !brought.insert(target.clone()) {
                diag(
                    &format!("/enrich/{i}/columns/{j}"),
                    format!("enriched column `{target}` is brought twice"),
                    Some(format!(
                        "drop one, or rename it: `{{{source}: {}_{source}}}`",
                        enrich.from
                    )),
                );
            }
            if !other_names.contains(source.as_str()) {
                diag(
                    &format!("/enrich/{i}/columns/{j}"),
                    format!("column `{source}` is not in table `{}`", enrich.from),
                    None,
                );
            }
            if names.contains(target.as_str()) {
                diag(
                    &format!("/enrich/{i}/columns/{j}"),
                    format!("enriched column `{target}` clashes with a schema column"),
                    Some(format!(
                        "rename it: `{{{source}: {}_{source}}}`",
                        enrich.from
                    )),
                );
            }
        }
    }
    depends_on
}

/// Each expectation has one rule, on a column or path of a type the rule applies to.
fn check_expectations(
    config: &IdcardConfig,
    columns: &[Column],
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    for (i, expectation) in config.expectations.iter().enumerate() {
        let rules = [
            expectation.not_null.is_some(),
            expectation.in_set.is_some(),
            expectation.between.is_some(),
            expectation.matches.is_some(),
        ];
        if rules.iter().filter(|r| **r).count() != 1 {
            diag(
                &format!("/expectations/{i}"),
                "an expectation needs exactly one rule".into(),
                Some("use one of not_null, in_set, between, matches".into()),
            );
        }
        match expectation_type(config, columns, &expectation.column) {
            Err((message, hint)) => {
                diag(&format!("/expectations/{i}/column"), message, hint);
            }
            Ok(data_type) if expectation.between.is_some() && !data_type.is_numeric() => diag(
                &format!("/expectations/{i}/between"),
                format!(
                    "`between` needs a numeric column, `{}` is not",
                    expectation.column
                ),
                None,
            ),
            Ok(data_type) if data_type.is_nested() && expectation.not_null.is_none() => diag(
                &format!("/expectations/{i}/column"),
                format!(
                    "`{}` is {}: only `not_null` applies to a nested value",
                    expectation.column,
                    data_type.name()
                ),
                Some("check one of its fields, e.g. `column: address.zip`".into()),
            ),
            Ok(_) => {}
        }
        if expectation.in_set.as_ref().is_some_and(Vec::is_empty) {
            diag(
                &format!("/expectations/{i}/in_set"),
                "in_set lists no value: every row would break it".into(),
                Some("list the accepted values, e.g. in_set: [delivered, shipped]".into()),
            );
        }
        if let Some(pattern) = &expectation.matches
            && let Err(err) = regex::Regex::new(pattern)
        {
            diag(
                &format!("/expectations/{i}/matches"),
                format!("invalid regular expression: {err}"),
                None,
            );
        }
    }
}

/// The gateway exposes only schema or enriched columns.
fn check_gateway_columns(
    config: &IdcardConfig,
    names: &HashSet<&str>,
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    if let Some(exposed) = &config.gateway.columns {
        let enriched = config.enriched_columns();
        for (i, column) in exposed.iter().enumerate() {
            if !names.contains(column.as_str()) && !enriched.contains(column) {
                diag(
                    &format!("/gateway/columns/{i}"),
                    format!("column `{column}` is neither in the schema nor enriched"),
                    use_one_of(config),
                );
            }
        }
    }
}

/// A column's PII mode and domain, as its idcard declares them.
fn pii_of<'a>(config: &'a IdcardConfig, column: &str) -> Option<(crate::pii::PiiMode, &'a str)> {
    config
        .pii
        .iter()
        .find(|p| p.column == column)
        .map(|p| (p.mode, p.domain.as_str()))
}

/// The type a column declares (recursively for `struct` and `list<...>`), or `None` after a
/// diagnostic. `pointer` is the column's JSON pointer in the idcard.
fn column_type(
    column: &super::config::ColumnConfig,
    pointer: &str,
    diag: &mut impl FnMut(&str, String, Option<String>),
) -> Option<ColumnType> {
    fn parse(
        text: &str,
        column: &super::config::ColumnConfig,
        pointer: &str,
        diag: &mut impl FnMut(&str, String, Option<String>),
    ) -> Option<ColumnType> {
        let text = text.trim();
        if let Some(item) = text.strip_prefix("list<").and_then(|t| t.strip_suffix('>')) {
            return Some(ColumnType::List(Arc::new(parse(
                item, column, pointer, diag,
            )?)));
        }
        if text == "struct" {
            if column.fields.is_empty() {
                diag(
                    &format!("{pointer}/type"),
                    format!("struct column `{}` declares no fields", column.name),
                    Some("list them under `fields:`, each like a column".into()),
                );
                return None;
            }
            let mut names = HashSet::new();
            let mut fields = Vec::new();
            for (j, field) in column.fields.iter().enumerate() {
                let at = format!("{pointer}/fields/{j}");
                if !names.insert(field.name.as_str()) {
                    diag(
                        &format!("{at}/name"),
                        format!("duplicate field `{}`", field.name),
                        None,
                    );
                }
                for (set, what) in [
                    (field.format.is_some(), "format"),
                    (field.pad_left.is_some(), "pad_left"),
                ] {
                    if set {
                        diag(
                            &format!("{at}/{what}"),
                            format!("`{what}` applies to top-level columns only"),
                            Some("a nested timestamp or date is ISO 8601 text".into()),
                        );
                    }
                }
                fields.push(super::model::NestedField {
                    name: field.name.clone(),
                    data_type: column_type(field, &at, diag)?,
                    nullable: field.nullable,
                });
            }
            return Some(ColumnType::Struct(fields.into()));
        }
        let Some(scalar) = ColumnType::parse(text) else {
            diag(
                &format!("{pointer}/type"),
                format!("unknown type `{text}`"),
                Some(format!("use one of {TYPE_NAMES}")),
            );
            return None;
        };
        Some(scalar)
    }
    // Counted before parsing, which recurses once per level (30 000 levels overflowed the
    // stack of `validate`, 10 000 that of a run).
    if column.data_type.matches("list<").count() > MAX_NESTING {
        diag(
            &format!("{pointer}/type"),
            format!("`{}` nests lists more than {MAX_NESTING} deep", column.name),
            Some("flatten the value, or keep the deep part as a JSON string".into()),
        );
        return None;
    }
    let data_type = parse(&column.data_type, column, pointer, diag)?;
    if data_type.depth() > MAX_NESTING {
        diag(
            &format!("{pointer}/type"),
            format!(
                "`{}` nests lists and structs more than {MAX_NESTING} deep",
                column.name
            ),
            Some("flatten the value, or keep the deep part as a JSON string".into()),
        );
        return None;
    }
    let holds_struct = {
        let mut at = &data_type;
        while let ColumnType::List(item) = at {
            at = item;
        }
        matches!(at, ColumnType::Struct(_))
    };
    if !column.fields.is_empty() && !holds_struct {
        diag(
            &format!("{pointer}/fields"),
            format!(
                "`fields` belongs to a struct, `{}` is {}",
                column.name,
                data_type.name()
            ),
            Some("declare `type: struct` or `type: list<struct>`".into()),
        );
    }
    Some(data_type)
}

/// Most levels of lists and structs in one column's type: Delta and the engine's readers
/// recurse once per level.
const MAX_NESTING: usize = 32;

/// The columns an idcard declares, for hints.
fn column_list(config: &IdcardConfig) -> String {
    let names: Vec<&str> = config.schema.iter().map(|c| c.name.as_str()).collect();
    names.join(", ")
}

/// The hint naming the columns an idcard declares.
fn use_one_of(config: &IdcardConfig) -> Option<String> {
    Some(format!("use one of: {}", column_list(config)))
}

/// Checks that `name` is a top-level scalar column (a key, a `latest_by` key, a join column).
fn check_scalar_column(
    config: &IdcardConfig,
    columns: &[Column],
    name: &str,
    what: &str,
    pointer: &str,
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    match columns.iter().find(|c| c.name == name) {
        Some(column) if column.data_type.is_nested() => diag(
            pointer,
            format!(
                "`{name}` is {}: a key or join column holds one value",
                column.data_type.name()
            ),
            Some("use a scalar column".into()),
        ),
        Some(_) => {}
        None if name.contains(['.', '[']) => diag(
            pointer,
            format!(
                "`{name}` is a path into a nested column: keys and joins take top-level columns"
            ),
            Some("lift the field to a top-level column in the source".into()),
        ),
        None => diag(
            pointer,
            format!("{what} `{name}` is not in the schema"),
            use_one_of(config),
        ),
    }
}

/// The type an expectation checks: a column, or a path through struct fields.
fn expectation_type<'a>(
    config: &IdcardConfig,
    columns: &'a [Column],
    path: &str,
) -> Result<&'a ColumnType, (String, Option<String>)> {
    let Some((name, steps)) = super::model::parse_path(path) else {
        return Err((
            format!("`{path}` is not a column or a path"),
            use_one_of(config),
        ));
    };
    let Some(column) = columns.iter().find(|c| c.name == name) else {
        return Err((
            format!("column `{name}` is not in the schema"),
            use_one_of(config),
        ));
    };
    if steps.contains(&super::model::Step::Each) {
        return Err((
            format!("`{path}` reaches into a list: an expectation checks one value per row"),
            Some("check a struct field (`address.zip`) or the whole list (`not_null`)".into()),
        ));
    }
    super::model::type_at(&column.data_type, &steps).map_err(|e| (format!("`{path}`: {e}"), None))
}

/// Checks the `pii:` entries and marks their columns and nested leaves.
fn check_pii(
    config: &IdcardConfig,
    columns: &mut [Column],
    diag: &mut impl FnMut(&str, String, Option<String>),
) {
    let mut seen = HashSet::new();
    for (i, pii) in config.pii.iter().enumerate() {
        let at = format!("/pii/{i}/column");
        if !seen.insert(pii.column.as_str()) {
            diag(
                &at,
                format!("column `{}` is listed twice", pii.column),
                None,
            );
            continue;
        }
        let Some((name, steps)) = super::model::parse_path(&pii.column) else {
            diag(
                &at,
                format!("`{}` is not a column or a path", pii.column),
                Some("e.g. `zip`, `address.zip`, `contacts[].email`".into()),
            );
            continue;
        };
        if let Some(subject) = &pii.subject {
            let at = format!("/pii/{i}/subject");
            if pii.mode != crate::pii::PiiMode::Randomized {
                diag(
                    &at,
                    format!(
                        "`{}`: a subject key is for randomized values (a deterministic one must \
                         compare equal across subjects)",
                        pii.column
                    ),
                    Some("use `mode: randomized`, or drop `subject:`".into()),
                );
            }
            match columns.iter().find(|c| &c.name == subject) {
                None => diag(
                    &at,
                    format!("subject column `{subject}` is not in the schema"),
                    Some(
                        "a top-level column naming whose data this is, e.g. `customer_unique_id`"
                            .into(),
                    ),
                ),
                Some(c) if c.data_type.is_nested() => diag(
                    &at,
                    format!(
                        "subject column `{subject}` is {}: it must be a single value",
                        c.data_type.name()
                    ),
                    Some("name a top-level scalar column".into()),
                ),
                Some(_) if *subject == name => diag(
                    &at,
                    format!("`{subject}` cannot be its own subject"),
                    Some("name the column that says whose data this is".into()),
                ),
                Some(_) => {}
            }
        }
        let Some(column) = columns.iter_mut().find(|c| c.name == name) else {
            diag(
                &at,
                format!("column `{name}` is not in the schema"),
                use_one_of(config),
            );
            continue;
        };
        match super::model::type_at(&column.data_type, &steps) {
            Err(e) => {
                diag(&at, format!("`{}`: {e}", pii.column), None);
                continue;
            }
            Ok(ColumnType::String) => {}
            Ok(other) => diag(
                &at,
                format!(
                    "PII `{}` is {}: an encrypted value is text",
                    pii.column,
                    other.name()
                ),
                Some(if other.is_nested() {
                    "name its string leaves, e.g. `address.zip` or `contacts[].email`".into()
                } else {
                    "declare it as `type: string`".into()
                }),
            ),
        }
        if pii.domain.trim().is_empty() {
            diag(
                &format!("/pii/{i}/domain"),
                "the key domain is empty".into(),
                None,
            );
        }
        let compared = config.key.contains(&pii.column)
            || config.latest_by.iter().any(|l| l.key.contains(&pii.column));
        if compared && pii.mode != crate::pii::PiiMode::Deterministic {
            diag(
                &format!("/pii/{i}/mode"),
                format!(
                    "`{}` is a key column: randomized values never compare equal",
                    pii.column
                ),
                Some("use `mode: deterministic`".into()),
            );
        }
        let marked = super::model::ColumnPii {
            mode: pii.mode,
            domain: pii.domain.clone(),
            subject: pii.subject.clone(),
        };
        if steps.is_empty() {
            column.pii = Some(marked);
        } else {
            column.nested_pii.push(super::model::NestedPii {
                path: pii.column.clone(),
                steps,
                pii: marked,
            });
        }
    }
}

/// The columns an enrichment brings: `(name in the other table, name here)`.
pub fn enrich_column_names(column: &EnrichColumn) -> (String, String) {
    match column {
        EnrichColumn::Same(name) => (name.clone(), name.clone()),
        EnrichColumn::Renamed(map) => map
            .iter()
            .next()
            .map(|(s, t)| (s.clone(), t.clone()))
            .unwrap_or_default(),
    }
}

/// Topological order (stable: by name among ready tables); a cycle is an error on each member.
fn order_by_dependencies(
    tables: Vec<Table>,
    parsed: &[(PathBuf, IdcardConfig, PositionIndex)],
    out: &mut Vec<Diagnostic>,
) -> Vec<Table> {
    let mut remaining: BTreeMap<String, Table> = tables
        .into_iter()
        .map(|t| (t.name().to_owned(), t))
        .collect();
    let mut ordered: Vec<Table> = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<String> = remaining
            .values()
            .filter(|t| t.depends_on.iter().all(|d| !remaining.contains_key(d)))
            .map(|t| t.name().to_owned())
            .collect();
        if ready.is_empty() {
            // The tables on a cycle; the others wait for them.
            let on_cycle = |start: &str| {
                let mut seen: HashSet<&str> = HashSet::new();
                let mut stack: Vec<&str> = remaining[start]
                    .depends_on
                    .iter()
                    .map(String::as_str)
                    .collect();
                while let Some(name) = stack.pop() {
                    if name == start {
                        return true;
                    }
                    if seen.insert(name)
                        && let Some(table) = remaining.get(name)
                    {
                        stack.extend(table.depends_on.iter().map(String::as_str));
                    }
                }
                false
            };
            let cycle: Vec<&str> = remaining
                .keys()
                .map(String::as_str)
                .filter(|name| on_cycle(name))
                .collect();
            for (file, config, index) in parsed {
                if cycle.contains(&config.table.as_str()) {
                    out.push(Diagnostic {
                        file: file.clone(),
                        pos: index.locate("/enrich"),
                        field: "enrich".into(),
                        message: format!("dependency cycle between tables {}", cycle.join(", ")),
                        hint: Some(
                            "remove one of the enrichment joins that close the cycle".into(),
                        ),
                    });
                }
            }
            break;
        }
        for name in ready {
            if let Some(table) = remaining.remove(&name) {
                ordered.push(table);
            }
        }
    }
    ordered
}

/// The JSON Schema of [`IdcardConfig`], as checked into `idcards/idcard.schema.json`.
pub fn generate_schema() -> String {
    let schema = schemars::schema_for!(IdcardConfig);
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serialises");
    text.push('\n');
    text
}

/// Checks a cron expression as Airflow takes it: a preset, or five fields of numbers in range,
/// `*`, lists, ranges, steps and (month, weekday) names.
pub(super) fn check_cron(cron: &str) -> Result<(), String> {
    const PRESETS: [&str; 7] = [
        "@once",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ];
    if cron.starts_with('@') {
        return if PRESETS.contains(&cron) {
            Ok(())
        } else {
            Err(format!(
                "unknown preset (use one of {})",
                PRESETS.join(", ")
            ))
        };
    }
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("{} field(s), cron has 5", fields.len()));
    }
    const NAMES: [(&str, u32, u32, &[&str]); 5] = [
        ("minute", 0, 59, &[]),
        ("hour", 0, 23, &[]),
        ("day of month", 1, 31, &[]),
        (
            "month",
            1,
            12,
            &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
        ),
        (
            "day of week",
            0,
            7,
            &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
        ),
    ];
    for (field, (name, min, max, words)) in fields.iter().zip(NAMES) {
        let value_ok = |v: &str| {
            v.parse::<u32>().is_ok_and(|n| (min..=max).contains(&n))
                || words.contains(&v.to_ascii_lowercase().as_str())
        };
        for item in field.split(',') {
            let (range, step) = item.split_once('/').unwrap_or((item, "1"));
            let step_ok = step.parse::<u32>().is_ok_and(|s| s > 0);
            let range_ok = range == "*"
                || match range.split_once('-') {
                    Some((a, b)) => value_ok(a) && value_ok(b),
                    None => value_ok(range),
                };
            if !step_ok || !range_ok {
                return Err(format!("{name} `{item}` (allowed: {min}-{max})"));
            }
        }
    }
    Ok(())
}

/// The place of the marker that starts or ends a second YAML document in `text` (a `---` before
/// any content opens the first one).
fn second_document(text: &str) -> Option<Pos> {
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line.starts_with("---") || line.starts_with("...");
        if marker && (content || line.starts_with("...")) {
            return Some(Pos {
                line: i + 1,
                column: 1,
            });
        }
        let trimmed = line.trim();
        content |= !marker && !trimmed.is_empty() && !trimmed.starts_with('#');
    }
    None
}
