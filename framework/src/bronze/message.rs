//! Reading one JSON message straight into cells, borrowing from the message bytes where the JSON
//! has no escapes (no `serde_json::Value` tree, no per-field allocation on the hot path).
//!
//! Messages in the exact layout this framework's producer writes are read by a plain scan
//! ([`read_fast`]); any other message (another producer's, one with an escape, a broken source
//! record) by the JSON parser ([`read`]), which gives every message the same meaning.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use crate::idcard::Table;

/// A message's fields before typing, in schema order.
pub struct Fields<'a> {
    pub cells: Vec<Option<Cow<'a, str>>>,
    /// `_ingestion_timestamp` as written by the producer.
    pub timestamp: Option<Cow<'a, str>>,
    pub source_line: Option<i64>,
}

/// Why a message is rejected, with its `_source_line` when the message carried one.
pub struct Rejected {
    pub reason: String,
    pub source_line: Option<i64>,
}

/// The bytes that open each column's field in the producer's layout: `"name":`.
#[derive(Debug)]
pub struct Layout {
    names: Vec<Vec<u8>>,
}

impl Layout {
    pub fn new(table: &Table) -> Self {
        let names = table
            .columns
            .iter()
            .map(|column| {
                let mut name = serde_json::to_vec(&column.name).expect("a string serializes");
                name.push(b':');
                name
            })
            .collect();
        Self { names }
    }
}

/// Reads a message in the producer's layout, `{"<column>":"<text>"|null,...,"_source_line":
/// "<n>","_ingestion_timestamp":"<text>"}` with no escape and no space, into `cells` (one per
/// column; an empty text is null, as in [`read`]); returns the timestamp text and the source
/// line. `None` for any other message.
pub fn read_fast<'a>(
    layout: &Layout,
    bytes: &'a [u8],
    cells: &mut Vec<Option<&'a str>>,
) -> Option<(&'a str, i64)> {
    cells.clear();
    let mut rest = bytes.strip_prefix(b"{")?;
    for (i, name) in layout.names.iter().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(b",")?;
        }
        rest = rest.strip_prefix(name.as_slice())?;
        if let Some(after) = rest.strip_prefix(b"null") {
            cells.push(None);
            rest = after;
        } else {
            let (text, after) = plain_string(rest)?;
            cells.push((!text.is_empty()).then_some(text));
            rest = after;
        }
    }
    let (line, rest) = plain_string(rest.strip_prefix(b",\"_source_line\":")?)?;
    let (timestamp, rest) = plain_string(rest.strip_prefix(b",\"_ingestion_timestamp\":")?)?;
    (rest == b"}").then_some((timestamp, line.parse().ok()?))
}

/// The JSON string without escapes at the start of `bytes`, and the bytes after it.
fn plain_string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let body = bytes.strip_prefix(b"\"")?;
    let end = body
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if body[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&body[..end]).ok()?, &body[end + 1..]))
}

/// The reason of a broken source record whose `_error` is empty or null.
pub const BROKEN: &str = "broken source record";

/// The reason of a message with a field the idcard does not declare.
pub fn unknown_field(name: &str) -> String {
    format!("unknown field `{name}` (not in the idcard's schema)")
}

/// Reads one message.
pub fn read<'a>(table: &Table, bytes: &'a [u8]) -> Result<Fields<'a>, Rejected> {
    let unreadable = |reason: String| Rejected {
        reason,
        source_line: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let outcome = match de.deserialize_any(MessageVisitor { table }) {
        Ok(outcome) => outcome,
        Err(err) => return Err(unreadable(format!("invalid JSON: {err}"))),
    };
    if let Err(err) = de.end() {
        return Err(unreadable(format!("invalid JSON: {err}")));
    }
    let outcome = outcome.map_err(unreadable)?;
    let source_line = outcome.fields.source_line;
    let reason = if let Some(error) = outcome.error {
        error.into_owned()
    } else if let Some(name) = outcome.unknown {
        unknown_field(&name)
    } else if let Some((name, kind)) = outcome.not_scalar {
        format!("column `{name}`: expected a scalar, got {kind}")
    } else {
        return Ok(outcome.fields);
    };
    Err(Rejected {
        reason,
        source_line,
    })
}

struct Outcome<'a> {
    fields: Fields<'a>,
    error: Option<Cow<'a, str>>,
    unknown: Option<String>,
    not_scalar: Option<(String, &'static str)>,
}

struct MessageVisitor<'t> {
    table: &'t Table,
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = Result<Outcome<'de>, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let columns = &self.table.columns;
        let mut outcome = Outcome {
            fields: Fields {
                cells: vec![None; columns.len()],
                timestamp: None,
                source_line: None,
            },
            error: None,
            unknown: None,
            not_scalar: None,
        };
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            let cell = match name.as_ref() {
                "_raw" => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                name => match columns.iter().position(|c| c.name == name) {
                    Some(at) => Some(at),
                    None if name.starts_with('_') => None,
                    None => {
                        outcome.unknown.get_or_insert_with(|| name.to_owned());
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            if let Some(at) = cell
                && columns[at].data_type.is_nested()
            {
                // A nested value as JSON text: this producer's (a string holding the JSON) or
                // another's (the JSON value itself).
                outcome.fields.cells[at] = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(text) if text.is_empty() => None,
                    serde_json::Value::String(text) => Some(Cow::Owned(text)),
                    other => Some(Cow::Owned(other.to_string())),
                };
                continue;
            }
            let value = map.next_value::<Cell<'de>>()?;
            let value = match value {
                Cell::Text(text) if text.is_empty() => None,
                Cell::Text(text) => Some(text),
                Cell::Null => None,
                Cell::Nested(kind) => {
                    outcome
                        .not_scalar
                        .get_or_insert_with(|| (name.clone().into_owned(), kind));
                    None
                }
            };
            match (cell, name.as_ref()) {
                (Some(at), _) => outcome.fields.cells[at] = value,
                (None, "_ingestion_timestamp") => outcome.fields.timestamp = value,
                (None, "_source_line") => {
                    outcome.fields.source_line = value.and_then(|v| v.parse().ok());
                }
                (None, "_error") => outcome.error = value.or(Some(Cow::Borrowed(BROKEN))),
                (None, other) => {
                    outcome.unknown.get_or_insert_with(|| other.to_owned());
                }
            }
        }
        Ok(Ok(outcome))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Ok(Err("expected a JSON object, got an array".into()))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got a string".into()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got a number".into()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got a number".into()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got a number".into()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got a boolean".into()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("expected a JSON object, got null".into()))
    }
}

/// A string that borrows from the input when it can (serde's own `Cow<str>` never borrows).
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One field value.
enum Cell<'a> {
    Null,
    Text(Cow<'a, str>),
    /// An array or object, with its kind for the message.
    Nested(&'static str),
}

impl<'de> de::Deserialize<'de> for Cell<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Cell::Null)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested("an object"))
    }
}
