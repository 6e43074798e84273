//! JSON sources: JSON Lines (one object per line, read line by line: memory stays flat) or one
//! JSON array of objects (read whole). Each object becomes a row of text cells in schema order,
//! like a CSV record: a scalar as its text, a nested value (`struct`, `list<...>` columns) as its
//! compact JSON text, typed and checked by bronze with the path of what does not fit. A line or
//! element that is not an object of the schema's fields is a broken record: it travels on to the
//! reject table with the reason, so nothing is lost.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::csv::RecordRef;
use super::{Error, Result};
use crate::bronze::json_kind;
use crate::idcard::Table;

/// A JSON source read record by record.
pub struct JsonRecords {
    input: Input,
    record: ::csv::ByteRecord,
    order: Vec<usize>,
    path: PathBuf,
    file_name: String,
    /// Schema columns by name (after `source.rename`), with whether they are nested.
    columns: Vec<(String, bool)>,
    rename: std::collections::BTreeMap<String, String>,
    /// Cells of the record at hand, in schema order.
    cells: Vec<String>,
}

enum Input {
    Lines {
        reader: std::io::BufReader<std::fs::File>,
        line: u64,
        read: u64,
        buffer: Vec<u8>,
    },
    Array {
        elements: std::vec::IntoIter<(u64, Vec<u8>)>,
        size: u64,
        done: u64,
    },
}

/// What one source record turned out to be.
enum Parsed {
    Row,
    Broken(String),
}

impl JsonRecords {
    /// Opens `path`: an array when its first character is `[`, JSON Lines otherwise.
    pub fn open(table: &Table, path: &Path) -> Result<Self> {
        let read_error = |source| Error::Read {
            path: path.into(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let start = reader.fill_buf().map_err(read_error)?;
        let bom = if start.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        let first = start[bom..].iter().find(|b| !b.is_ascii_whitespace());
        let input = if first == Some(&b'[') {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(read_error)?;
            let elements = split_array(&bytes[bom..]).map_err(|reason| Error::Format {
                path: path.into(),
                reason,
            })?;
            Input::Array {
                size: elements.len() as u64,
                elements: elements.into_iter(),
                done: 0,
            }
        } else {
            reader.consume(bom);
            Input::Lines {
                reader,
                line: 0,
                read: bom as u64,
                buffer: Vec::new(),
            }
        };
        let columns: Vec<(String, bool)> = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.is_nested()))
            .collect();
        Ok(Self {
            input,
            record: ::csv::ByteRecord::new(),
            order: (0..columns.len()).collect(),
            path: path.into(),
            file_name: super::csv::file_name(path),
            cells: vec![String::new(); columns.len()],
            columns,
            rename: table.config.source.rename.clone(),
        })
    }

    /// Bytes read so far (JSON Lines) or elements read (an array, whose size counts elements).
    pub fn position(&self) -> u64 {
        match &self.input {
            Input::Lines { read, .. } => *read,
            Input::Array { done, .. } => *done,
        }
    }

    /// The size [`Self::position`] runs up to, when it is not the file's.
    pub fn size(&self) -> Option<u64> {
        match &self.input {
            Input::Lines { .. } => None,
            Input::Array { size, .. } => Some(*size),
        }
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>> {
        let (line, text) = match &mut self.input {
            Input::Lines {
                reader,
                line,
                read,
                buffer,
            } => loop {
                buffer.clear();
                let n = reader
                    .read_until(b'\n', buffer)
                    .map_err(|source| Error::Read {
                        path: self.path.clone(),
                        source,
                    })?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                *read += n as u64;
                if !buffer.iter().all(u8::is_ascii_whitespace) {
                    break (*line, std::mem::take(buffer));
                }
            },
            Input::Array { elements, done, .. } => match elements.next() {
                None => return Ok(None),
                Some(element) => {
                    *done += 1;
                    element
                }
            },
        };
        let parsed = self.parse(line, &text);
        let raw = matches!(parsed, Parsed::Broken(_))
            .then(|| String::from_utf8_lossy(&text).trim_end().to_owned());
        if let Input::Lines { buffer, .. } = &mut self.input {
            *buffer = text;
        }
        Ok(Some(match parsed {
            Parsed::Row => {
                self.record.clear();
                for cell in &self.cells {
                    self.record.push_field(cell.as_bytes());
                }
                RecordRef::row(line, &self.record, &self.order)
            }
            Parsed::Broken(reason) => RecordRef::Broken {
                line,
                raw: raw.unwrap_or_default(),
                reason,
            },
        }))
    }

    /// Fills the cells from one record's text.
    fn parse(&mut self, line: u64, text: &[u8]) -> Parsed {
        let at = |what: String| Parsed::Broken(format!("{}:{line}: {what}", self.file_name));
        let text = text.trim_ascii_end();
        let object = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return at(format!(
                    "expected a JSON object, found {}",
                    json_kind(&other)
                ));
            }
            Err(e) => return at(format!("not JSON: {e}")),
        };
        for cell in &mut self.cells {
            cell.clear();
        }
        for (name, value) in object {
            let name = self.rename.get(&name).cloned().unwrap_or(name);
            let Some(column) = self.columns.iter().position(|(c, _)| *c == name) else {
                return at(format!(
                    "field `{name}` is not in the idcard's schema (add it to `schema:` or map it with `source.rename`)"
                ));
            };
            let nested = self.columns[column].1;
            let cell = &mut self.cells[column];
            match value {
                Value::Null => {}
                Value::String(text) if !nested => *cell = text,
                Value::Array(_) | Value::Object(_) if !nested => {
                    return at(format!(
                        "field `{name}`: expected a single value, found {} (declare the column as `struct` or `list<...>`)",
                        json_kind(&value)
                    ));
                }
                Value::Bool(_) | Value::Number(_) if !nested => *cell = value.to_string(),
                nested_value => *cell = nested_value.to_string(),
            }
        }
        Parsed::Row
    }
}

/// The elements of a JSON array (the file's text, which starts with `[` after blanks), each
/// with the line it starts on. Only the array's own structure is read here (strings, nesting,
/// commas); each element is parsed on its own, so a broken element is one reject, not a failed file.
fn split_array(bytes: &[u8]) -> std::result::Result<Vec<(u64, Vec<u8>)>, String> {
    let open = bytes.iter().position(|&b| b == b'[').unwrap_or(0);
    let mut line = 1 + bytes[..open].iter().filter(|&&b| b == b'\n').count() as u64;
    let mut elements = Vec::new();
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut start: Option<(usize, u64)> = None;
    let mut after_comma = false;
    for i in open + 1..bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b']' | b',' if depth == 0 => {
                match start.take() {
                    Some((from, at)) => elements.push((at, bytes[from..i].to_vec())),
                    None if b == b',' || after_comma => {
                        return Err(format!(
                            "line {line}: an empty array element (a comma first, last or doubled)"
                        ));
                    }
                    None => {}
                }
                after_comma = b == b',';
                if b == b']' {
                    return match bytes[i + 1..].iter().find(|b| !b.is_ascii_whitespace()) {
                        None => Ok(elements),
                        Some(_) => Err(format!("line {line}: text after the array's closing `]`")),
                    };
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                start.get_or_insert((i, line));
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }
    Err(format!(
        "line {line}: the JSON array is not closed (a `]` is missing, or a string or object is left open)"
    ))
}
