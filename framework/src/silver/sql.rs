//! SQL text built from an idcard: identifiers, normalisation, expectation predicates, key matches
//! (and `float_key`, the function a key match on doubles calls).

use std::sync::Arc;

use deltalake::arrow::array::{Array, AsArray, Int64Array};
use deltalake::arrow::datatypes::{DataType, Float64Type};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use deltalake::datafusion::prelude::SessionContext;

use crate::idcard::config::ExpectationConfig;
use crate::idcard::{Action, ColumnType, Table};

/// A double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column or a path through struct fields (`address.zip`) as a SQL expression.
pub fn path_expr(path: &str) -> String {
    match crate::idcard::model::parse_path(path) {
        Some((column, steps)) if !steps.is_empty() => {
            steps.iter().fold(ident(column), |inner, step| match step {
                crate::idcard::model::Step::Field(name) => {
                    format!("get_field({inner}, {})", literal(name))
                }
                // The idcard compiler refuses list steps where a path becomes SQL.
                crate::idcard::model::Step::Each => inner,
            })
        }
        _ => ident(path),
    }
}

/// `"a", "b", "c"`: names as a comma-separated list of identifiers.
pub fn ident_list<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    names
        .into_iter()
        .map(|n| ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A single-quoted SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `left.k = right.k AND ...`: two relations' rows with equal keys (`key_match(key, "target",
/// "source")` is a MERGE condition).
pub fn key_match(key: &[String], left: &str, right: &str) -> String {
    key.iter()
        .map(|k| format!("{left}.{id} = {right}.{id}", id = ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// [`key_match`] for a hash join on a table's key in `ctx`, each `double` key column compared
/// through `float_key` (registered in `ctx` when the key has one): equal values give equal
/// integers. DataFusion 55 checks every floating-point key column of a join's whole
/// build side for `-0.0` once per probe batch (`normalize_float_zero` in `equal_rows_arr`), so
/// a join on doubles costs the product of its two sides: 49% of the time of an unchanged
/// re-delivery of geolocation, whose key holds its coordinates.
///
/// Only the APPEND anti-join uses it. Switching a DIFF table's joins to it (the changed rows,
/// the files holding the keys, the rows after) made an unchanged re-delivery of geolocation
/// as a DIFF table run over 120 s at 5.7 GiB, against 1.5-2.4 s with plain equality (scale 1,
/// 2026-12-07), though each of those joins alone on the same files was faster with it: the
/// cause is not found, so the DIFF joins compare doubles as they are.
pub fn key_match_joinable(ctx: &SessionContext, table: &Table, left: &str, right: &str) -> String {
    let double = |k: &String| table.column(k).map(|c| &c.data_type) == Some(&ColumnType::Double);
    if table.key().iter().any(double) {
        register_float_key(ctx);
    }
    table
        .key()
        .iter()
        .map(|k| {
            let id = ident(k);
            match double(k) {
                true => format!("{FLOAT_KEY}({left}.{id}) = {FLOAT_KEY}({right}.{id})"),
                false => format!("{left}.{id} = {right}.{id}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The function [`key_match_joinable`] compares doubles through.
const FLOAT_KEY: &str = "float_key";

/// Registers `float_key(double) -> bigint` in `ctx`: the value's bits, with `-0.0` as `0.0` and
/// every NaN as one, so that two values SQL calls equal (and NaNs, as DataFusion's joins match
/// them) give the same integer, and no two others do; null stays null.
fn register_float_key(ctx: &SessionContext) {
    fn bits(value: f64) -> i64 {
        let value = if value == 0.0 {
            0.0
        } else if value.is_nan() {
            f64::NAN
        } else {
            value
        };
        value.to_bits() as i64
    }
    let float_key = Arc::new(|args: &[ColumnarValue]| match &args[0] {
        ColumnarValue::Scalar(ScalarValue::Float64(value)) => {
            Ok(ColumnarValue::Scalar(ScalarValue::Int64(value.map(bits))))
        }
        ColumnarValue::Scalar(other) => {
            Err(deltalake::datafusion::error::DataFusionError::Internal(
                format!("{FLOAT_KEY} takes a double, not {}", other.data_type()),
            ))
        }
        ColumnarValue::Array(array) => {
            let values = array.as_primitive::<Float64Type>();
            let keys: Int64Array = values.unary(bits);
            Ok(ColumnarValue::Array(Arc::new(keys) as Arc<dyn Array>))
        }
    });
    ctx.register_udf(create_udf(
        FLOAT_KEY,
        vec![DataType::Float64],
        DataType::Int64,
        Volatility::Immutable,
        float_key,
    ));
}

/// The select expression of a column after normalisation.
pub fn normalised(table: &Table, column: &str) -> String {
    let c = table.column(column).expect("column exists");
    match c.pad_left {
        // A PII column was padded at the edge, before encryption.
        Some((width, pad)) if c.data_type == ColumnType::String && c.pii.is_none() => format!(
            "CASE WHEN {id} IS NULL THEN NULL WHEN character_length({id}) >= {width} THEN {id} ELSE lpad({id}, {width}, {p}) END AS {id}",
            id = ident(column),
            p = literal(&pad.to_string())
        ),
        _ => ident(column),
    }
}

/// Name of an expectation as recorded with failing rows.
pub fn rule_name(expectation: &ExpectationConfig) -> String {
    if let Some(name) = &expectation.name {
        return name.clone();
    }
    let rule = if expectation.not_null.is_some() {
        "not_null"
    } else if expectation.in_set.is_some() {
        "in_set"
    } else if expectation.between.is_some() {
        "between"
    } else {
        "matches"
    };
    format!("{}_{rule}", expectation.column)
}

/// SQL that is true when a row passes. A null passes every rule but `not_null`.
pub fn passes(expectation: &ExpectationConfig) -> String {
    let id = path_expr(&expectation.column);
    if expectation.not_null == Some(true) {
        return format!("{id} IS NOT NULL");
    }
    if let Some(values) = &expectation.in_set {
        let list: Vec<String> = values.iter().map(|v| literal(v)).collect();
        return format!(
            "({id} IS NULL OR CAST({id} AS VARCHAR) IN ({}))",
            list.join(", ")
        );
    }
    if let Some(range) = &expectation.between {
        let mut terms = vec![format!("{id} IS NULL")];
        let mut bounds = Vec::new();
        if let Some(min) = range.min {
            bounds.push(format!("CAST({id} AS DOUBLE) >= {min:?}"));
        }
        if let Some(max) = range.max {
            bounds.push(format!("CAST({id} AS DOUBLE) <= {max:?}"));
        }
        if !bounds.is_empty() {
            terms.push(format!("({})", bounds.join(" AND ")));
        } else {
            terms.push("TRUE".into());
        }
        return format!("({})", terms.join(" OR "));
    }
    if let Some(pattern) = &expectation.matches {
        return format!(
            "({id} IS NULL OR regexp_like(CAST({id} AS VARCHAR), {}))",
            literal(pattern)
        );
    }
    "TRUE".into()
}

/// Rules that remove rows (drop, quarantine, fail), in idcard order, with the built-in key check first.
pub fn row_rules(table: &Table) -> Vec<(String, String, Action)> {
    let mut rules = vec![(
        "key_not_null".to_owned(),
        table
            .key()
            .iter()
            .map(|k| format!("{} IS NOT NULL", ident(k)))
            .collect::<Vec<_>>()
            .join(" AND "),
        Action::Quarantine,
    )];
    for expectation in table.silver_expectations() {
        if expectation.action != Action::Warn {
            rules.push((
                rule_name(expectation),
                passes(expectation),
                expectation.action,
            ));
        }
    }
    rules
}
