//! CSV per the idcard's dialect. Each record becomes a [`SourceRow`]: a row of cells in schema
//! order, or a broken record with the reason (it travels on as a message and ends in the reject
//! table, so nothing is lost).

use std::path::Path;

use crate::idcard::Table;

use super::{Error, Result};

/// One record of a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRow {
    /// Cells in schema column order; an empty cell is `None`.
    Row {
        line: u64,
        cells: Vec<Option<String>>,
    },
    /// A record that cannot be a row: the raw text and why.
    Broken {
        line: u64,
        raw: String,
        reason: String,
    },
}

/// Reads a whole CSV file for `table`.
pub fn read_csv(table: &Table, path: &Path) -> Result<Vec<SourceRow>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    parse_csv(table, path, &bytes)
}

/// Parses CSV bytes for `table`; `path` is only used in messages.
pub fn parse_csv(table: &Table, path: &Path, bytes: &[u8]) -> Result<Vec<SourceRow>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let dialect = &table.config.source.csv;
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(dialect.delimiter.as_bytes()[0])
        .quote(dialect.quote.as_bytes()[0])
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = reader.byte_records();
    // Position in the row of each schema column.
    let order: Vec<usize> = if dialect.header {
        let header = match records.next() {
            Some(Ok(header)) => header,
            Some(Err(err)) => {
                return Err(Error::Format {
                    path: path.into(),
                    reason: err.to_string(),
                });
            }
            None => {
                return Err(Error::Format {
                    path: path.into(),
                    reason: "the file is empty: no header line\n  hint: the idcard says `source.csv.header: true`; \
                             write the header, or deliver no file when there is nothing to send".into(),
                });
            }
        };
        header_order(table, path, &header)?
    } else {
        (0..table.columns.len()).collect()
    };
    let width = order.len();
    let delimiter = dialect.delimiter.clone();
    let mut rows = Vec::new();
    for record in records {
        let record = record.map_err(|err| Error::Format {
            path: path.into(),
            reason: err.to_string(),
        })?;
        let line = record.position().map_or(0, ::csv::Position::line);
        let raw = || {
            record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
                .join(&delimiter)
        };
        if record.len() != width {
            rows.push(SourceRow::Broken {
                line,
                raw: raw(),
                reason: format!(
                    "{}:{line}: expected {width} fields, found {}",
                    file_name(path),
                    record.len()
                ),
            });
            continue;
        }
        let mut cells = Vec::with_capacity(width);
        let mut broken = None;
        for &at in &order {
            let field = &record[at];
            match std::str::from_utf8(field) {
                Ok("") => cells.push(None),
                Ok(text) => cells.push(Some(text.to_owned())),
                Err(err) => {
                    broken = Some(format!(
                        "{}:{line}: invalid UTF-8 in column `{}` at byte {}",
                        file_name(path),
                        table.columns[cells.len()].name,
                        err.valid_up_to()
                    ));
                    break;
                }
            }
        }
        rows.push(match broken {
            Some(reason) => SourceRow::Broken {
                line,
                raw: raw(),
                reason,
            },
            None => SourceRow::Row { line, cells },
        });
    }
    Ok(rows)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Maps header names (after `source.rename`) to schema columns.
fn header_order(table: &Table, path: &Path, header: &::csv::ByteRecord) -> Result<Vec<usize>> {
    let rename = &table.config.source.rename;
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let Ok(name) = std::str::from_utf8(field) else {
            return Err(Error::Format {
                path: path.into(),
                reason: format!(
                    "line 1: header field {} is not valid UTF-8\n  hint: save the file as UTF-8 (the only encoding idcards accept)",
                    i + 1
                ),
            });
        };
        let name = name.trim().to_owned();
        let name = rename.get(&name).cloned().unwrap_or(name);
        if let Some(first) = names.iter().position(|n| *n == name) {
            return Err(Error::Format {
                path: path.into(),
                reason: format!(
                    "line 1: column `{name}` appears twice in the header (fields {} and {})\n  hint: remove or rename one of them",
                    first + 1,
                    i + 1
                ),
            });
        }
        names.push(name);
    }
    if let [only] = names.as_slice()
        && table.columns.len() > 1
        && let Some(other) = [';', '\t', '|', ',']
            .into_iter()
            .find(|d| only.contains(*d))
    {
        return Err(Error::Format {
            path: path.into(),
            reason: format!(
                "line 1: the header is a single field, and it holds `{}`: the file looks {other:?}-separated\n  hint: set `source.csv.delimiter: {:?}` in the idcard",
                other.escape_default(),
                other.to_string()
            ),
        });
    }
    for name in &names {
        if table.column(name).is_none() {
            return Err(Error::UnknownColumn {
                path: path.into(),
                column: name.clone(),
            });
        }
    }
    table
        .columns
        .iter()
        .map(|column| {
            names
                .iter()
                .position(|n| *n == column.name)
                .ok_or_else(|| Error::MissingColumn {
                    path: path.into(),
                    column: column.name.clone(),
                    hint: format!("the header has: {}", names.join(", ")),
                })
        })
        .collect()
}
