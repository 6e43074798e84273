//! Nested columns (`struct` and `list<...>`): a message carries the value as JSON text (or, from
//! another producer, as a JSON value, which the message reader turns into its text). Each value
//! is checked against the idcard's type, and what does not fit is named by its path
//! (`contacts[1].email`); the values that fit are decoded into Arrow by arrow-json.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, StringArray, new_null_array};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::{Field, Schema};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::json::ReaderBuilder;
use serde_json::Value;

use crate::idcard::{Column, ColumnType};

/// Types the JSON text of nested column `column`; a message whose value does not fit gets a
/// reason naming the path (unless it has one already) and a null here.
pub fn type_column(
    column: &Column,
    text: &StringArray,
    reasons: &mut [Option<String>],
) -> Result<ArrayRef, ArrowError> {
    let mut values = Vec::with_capacity(text.len());
    for (i, reason) in reasons.iter_mut().enumerate() {
        let value = match text.is_valid(i).then(|| text.value(i)) {
            None => Value::Null,
            Some(json) => match serde_json::from_str::<Value>(json) {
                Ok(value) => value,
                Err(e) => {
                    reason
                        .get_or_insert_with(|| format!("column `{}`: not JSON: {e}", column.name));
                    Value::Null
                }
            },
        };
        let mut path = column.name.clone();
        let problem = if value.is_null() {
            (!column.nullable).then(|| "null in a non-nullable column".to_owned())
        } else {
            check(&value, &column.data_type, &mut path).err()
        };
        match problem {
            Some(problem) => {
                reason.get_or_insert_with(|| {
                    format!("column `{}`: at `{path}`: {problem}", column.name)
                });
                values.push(Value::Null);
            }
            None if reason.is_some() => values.push(Value::Null),
            None => values.push(value),
        }
    }
    match decode(&column.data_type, &values) {
        Ok(array) => Ok(array),
        // The checks above admit what arrow-json decodes; should one value still not decode,
        // each is decoded alone and the one that fails is a reject, not a failed batch.
        Err(_) => {
            let mut parts = Vec::with_capacity(values.len());
            for (value, reason) in values.iter().zip(reasons.iter_mut()) {
                let one = std::slice::from_ref(value);
                parts.push(decode(&column.data_type, one).or_else(|e| {
                    reason.get_or_insert_with(|| format!("column `{}`: {e}", column.name));
                    decode(&column.data_type, &[Value::Null])
                })?);
            }
            let parts: Vec<&dyn Array> = parts.iter().map(AsRef::as_ref).collect();
            deltalake::arrow::compute::concat(&parts)
        }
    }
}

/// The values as one Arrow array of `data_type`.
fn decode(data_type: &ColumnType, values: &[Value]) -> Result<ArrayRef, ArrowError> {
    let arrow = data_type.arrow();
    if values.is_empty() {
        return Ok(new_null_array(&arrow, 0));
    }
    let schema = Arc::new(Schema::new(vec![Field::new("v", arrow, true)]));
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(values.len())
        .with_strict_mode(true)
        .build_decoder()?;
    let rows: Vec<Value> = values
        .iter()
        .map(|v| serde_json::json!({ "v": v }))
        .collect();
    decoder.serialize(&rows)?;
    let batch = decoder
        .flush()?
        .ok_or_else(|| ArrowError::JsonError("no rows decoded".into()))?;
    Ok(batch.column(0).clone())
}

/// What kind of JSON value `value` is, for messages ("a number").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a non-null `value` against `data_type`; on a problem, `path` is where it is.
fn check(value: &Value, data_type: &ColumnType, path: &mut String) -> Result<(), String> {
    let expected = |what: &str| format!("expected {what}, found {}", json_kind(value));
    match (data_type, value) {
        (ColumnType::String, Value::String(_))
        | (ColumnType::Bool, Value::Bool(_))
        | (ColumnType::Double, Value::Number(_)) => Ok(()),
        (ColumnType::Int, Value::Number(n)) if n.is_i64() => Ok(()),
        (ColumnType::Int, Value::Number(n)) => Err(format!("{n} is not a whole number")),
        (ColumnType::Decimal { .. }, Value::Number(_) | Value::String(_))
        | (ColumnType::Timestamp | ColumnType::Date, Value::String(_)) => {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let cast = cast_with_options(
                &StringArray::from(vec![text.as_str()]),
                &data_type.arrow(),
                &CastOptions {
                    safe: true,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            if cast.is_null(0) {
                return Err(format!("{text:?} is not a valid {}", data_type.name()));
            }
            Ok(())
        }
        (ColumnType::Struct(fields), Value::Object(object)) => {
            if let Some(unknown) = object
                .keys()
                .find(|k| !fields.iter().any(|f| &f.name == *k))
            {
                path.push('.');
                path.push_str(unknown);
                return Err("unknown field (not in the idcard's schema)".into());
            }
            for field in fields.iter() {
                let len = path.len();
                path.push('.');
                path.push_str(&field.name);
                match object.get(&field.name) {
                    None | Some(Value::Null) if !field.nullable => {
                        return Err("null in a non-nullable field".into());
                    }
                    None | Some(Value::Null) => {}
                    Some(inner) => check(inner, &field.data_type, path)?,
                }
                path.truncate(len);
            }
            Ok(())
        }
        (ColumnType::List(item), Value::Array(values)) => {
            for (i, inner) in values.iter().enumerate() {
                if inner.is_null() {
                    continue;
                }
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check(inner, item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        (ColumnType::String, _) => Err(expected("a string")),
        (ColumnType::Int, _) => Err(expected("an integer")),
        (ColumnType::Double, _) => Err(expected("a number")),
        (ColumnType::Decimal { .. }, _) => Err(expected("a decimal number")),
        (ColumnType::Timestamp, _) => Err(expected("an ISO 8601 timestamp string")),
        (ColumnType::Date, _) => Err(expected("an ISO 8601 date string")),
        (ColumnType::Bool, _) => Err(expected("a boolean")),
        (ColumnType::Struct(_), _) => Err(expected("an object")),
        (ColumnType::List(_), _) => Err(expected("an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idcard::model::NestedField;

    fn profile() -> Column {
        let contact = ColumnType::Struct(
            vec![
                NestedField {
                    name: "kind".into(),
                    data_type: ColumnType::String,
                    nullable: false,
                },
                NestedField {
                    name: "email".into(),
                    data_type: ColumnType::String,
                    nullable: true,
                },
            ]
            .into(),
        );
        Column {
            name: "contacts".into(),
            data_type: ColumnType::List(Arc::new(contact)),
            nullable: true,
            format: None,
            pad_left: None,
            pii: None,
            nested_pii: Vec::new(),
        }
    }

    fn reasons_of(column: &Column, cells: &[Option<&str>]) -> (ArrayRef, Vec<Option<String>>) {
        let text = StringArray::from(cells.to_vec());
        let mut reasons = vec![None; cells.len()];
        let array = type_column(column, &text, &mut reasons).expect("typed");
        (array, reasons)
    }

    #[test]
    fn each_nested_reject_names_its_path() {
        let column = profile();
        let (array, reasons) = reasons_of(
            &column,
            &[
                Some(r#"[{"kind":"email","email":"a@b.c"},{"kind":"phone"}]"#),
                None,
                Some(r#"[{"kind":"email","email":5}]"#),
                Some(r#"[{"kind":"email"},{"email":"x@y.z"}]"#),
                Some(r#"[{"kind":"email","fax":"1"}]"#),
                Some(r#"{"kind":"email"}"#),
                Some(r#"[{"kind":"#),
                Some("[null]"),
            ],
        );
        assert_eq!(
            reasons,
            vec![
                None,
                None,
                Some("column `contacts`: at `contacts[0].email`: expected a string, found a number".into()),
                Some("column `contacts`: at `contacts[1].kind`: null in a non-nullable field".into()),
                Some("column `contacts`: at `contacts[0].fax`: unknown field (not in the idcard's schema)".into()),
                Some("column `contacts`: at `contacts`: expected an array, found an object".into()),
                Some("column `contacts`: not JSON: EOF while parsing a value at line 1 column 9".into()),
                None,
            ]
        );
        assert_eq!(array.len(), 8);
        let valid: Vec<bool> = (0..8).map(|i| array.is_valid(i)).collect();
        assert_eq!(
            valid,
            [true, false, false, false, false, false, false, true]
        );
        let lists = array
            .as_any()
            .downcast_ref::<deltalake::arrow::array::ListArray>()
            .unwrap();
        assert_eq!(lists.value_length(0), 2);
        let first = lists.value(0);
        let structs = first
            .as_any()
            .downcast_ref::<deltalake::arrow::array::StructArray>()
            .unwrap();
        let emails = structs.column_by_name("email").unwrap();
        let emails = emails.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(emails.value(0), "a@b.c");
        assert!(emails.is_null(1));
    }

    #[test]
    fn leaves_are_typed_and_a_bad_leaf_value_is_named() {
        let column = Column {
            name: "event".into(),
            data_type: ColumnType::Struct(
                vec![
                    NestedField {
                        name: "at".into(),
                        data_type: ColumnType::Timestamp,
                        nullable: true,
                    },
                    NestedField {
                        name: "amount".into(),
                        data_type: ColumnType::Decimal {
                            precision: 10,
                            scale: 2,
                        },
                        nullable: true,
                    },
                    NestedField {
                        name: "n".into(),
                        data_type: ColumnType::Int,
                        nullable: true,
                    },
                ]
                .into(),
            ),
            nullable: false,
            format: None,
            pad_left: None,
            pii: None,
            nested_pii: Vec::new(),
        };
        let (array, reasons) = reasons_of(
            &column,
            &[
                Some(r#"{"at":"2018-01-02T03:04:05Z","amount":"12.50","n":3}"#),
                Some(r#"{"at":"yesterday"}"#),
                Some(r#"{"n":1.5}"#),
                None,
            ],
        );
        assert_eq!(
            reasons,
            vec![
                None,
                Some(
                    "column `event`: at `event.at`: \"yesterday\" is not a valid timestamp".into()
                ),
                Some("column `event`: at `event.n`: 1.5 is not a whole number".into()),
                Some("column `event`: at `event`: null in a non-nullable column".into()),
            ]
        );
        let structs = array
            .as_any()
            .downcast_ref::<deltalake::arrow::array::StructArray>()
            .unwrap();
        let amount = structs.column_by_name("amount").unwrap();
        let amount = amount
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Decimal128Array>()
            .unwrap();
        assert_eq!(amount.value(0), 1250);
        let at = structs.column_by_name("at").unwrap();
        let at = at
            .as_any()
            .downcast_ref::<deltalake::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(at.value(0), 1_514_862_245_000_000);
    }
}
