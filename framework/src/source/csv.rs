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

/// One record as the streaming reader sees it, borrowing from the reader's buffer.
#[derive(Debug)]
pub enum RecordRef<'a> {
    /// A valid row: its fields (valid UTF-8) and the position of each schema column in them.
    /// Made by [`RecordRef::row`].
    Row {
        line: u64,
        record: &'a ::csv::ByteRecord,
        order: &'a [usize],
        /// The record's bytes ([`::csv::ByteRecord::as_slice`]) when they are UTF-8 as a
        /// whole: a cell is then sliced from it without being checked again.
        text: Option<&'a str>,
    },
    /// A record that cannot be a row: the raw text and why.
    Broken {
        line: u64,
        raw: String,
        reason: String,
    },
}

impl<'a> RecordRef<'a> {
    /// A valid row (every cell of `order` is UTF-8), its text checked once as a whole. The
    /// text is kept only when every cell of `order` starts and ends on a character boundary
    /// in it, so that each is UTF-8 alone.
    pub fn row(line: u64, record: &'a ::csv::ByteRecord, order: &'a [usize]) -> Self {
        let text = std::str::from_utf8(record.as_slice()).ok().filter(|text| {
            order.iter().all(|&at| {
                record.range(at).is_some_and(|cell| {
                    text.is_char_boundary(cell.start) && text.is_char_boundary(cell.end)
                })
            })
        });
        RecordRef::Row {
            line,
            record,
            order,
            text,
        }
    }

    /// The cell of schema column `column` ("" for a broken record). A row's cell is sliced
    /// from its checked text; it is checked alone only when the row has no such text (a
    /// character spans two cells: the reader then finds the cell that is not UTF-8).
    pub fn cell(&self, column: usize) -> &'a str {
        let RecordRef::Row {
            record,
            order,
            text,
            ..
        } = *self
        else {
            return "";
        };
        let Some(&at) = order.get(column) else {
            return "";
        };
        text.and_then(|text| text.get(record.range(at)?))
            .or_else(|| std::str::from_utf8(&record[at]).ok())
            .unwrap_or("")
    }

    /// The record's line in the file.
    pub fn line(&self) -> u64 {
        match self {
            RecordRef::Row { line, .. } | RecordRef::Broken { line, .. } => *line,
        }
    }

    #[cfg(test)]
    pub fn to_owned(&self) -> SourceRow {
        match self {
            RecordRef::Row { line, order, .. } => SourceRow::Row {
                line: *line,
                cells: (0..order.len())
                    .map(|column| self.cell(column))
                    .map(|c| (!c.is_empty()).then(|| c.to_owned()))
                    .collect(),
            },
            RecordRef::Broken { line, raw, reason } => SourceRow::Broken {
                line: *line,
                raw: raw.clone(),
                reason: reason.clone(),
            },
        }
    }
}

/// A CSV source read record by record in the idcard's dialect: memory stays flat whatever the
/// file's size.
pub struct CsvRecords<R: std::io::BufRead> {
    reader: ::csv::Reader<R>,
    record: ::csv::ByteRecord,
    order: Vec<usize>,
    path: std::path::PathBuf,
    file_name: String,
    delimiter: String,
    column_names: Vec<String>,
}

impl CsvRecords<std::io::BufReader<std::fs::File>> {
    /// Opens `path` and reads its header.
    pub fn open(table: &Table, path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Self::new(
            table,
            path,
            std::io::BufReader::with_capacity(1 << 20, file),
        )
    }
}

impl<R: std::io::BufRead> CsvRecords<R> {
    /// Reads from `input`; `path` is only used in messages.
    pub fn new(table: &Table, path: &Path, mut input: R) -> Result<Self> {
        // A UTF-8 byte order mark is not part of the first header name.
        let start = input.fill_buf().map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        if start.starts_with(b"\xEF\xBB\xBF") {
            input.consume(3);
        }
        let dialect = &table.config.source.csv;
        let mut reader = ::csv::ReaderBuilder::new()
            .delimiter(dialect.delimiter.as_bytes()[0])
            .quote(dialect.quote.as_bytes()[0])
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(input);
        let mut record = ::csv::ByteRecord::new();
        let order: Vec<usize> = if dialect.header {
            match reader.read_byte_record(&mut record) {
                Ok(true) => header_order(table, path, &record)?,
                Ok(false) => {
                    return Err(Error::Format {
                        path: path.into(),
                        reason: "the file is empty: no header line\n  hint: the idcard says `source.csv.header: true`; \
                                 write the header, or deliver no file when there is nothing to send".into(),
                    });
                }
                Err(err) => {
                    return Err(Error::Format {
                        path: path.into(),
                        reason: err.to_string(),
                    });
                }
            }
        } else {
            (0..table.columns.len()).collect()
        };
        Ok(Self {
            reader,
            record,
            order,
            path: path.into(),
            file_name: file_name(path),
            delimiter: dialect.delimiter.clone(),
            column_names: table.columns.iter().map(|c| c.name.clone()).collect(),
        })
    }

    /// Bytes of the input read so far.
    pub fn position(&self) -> u64 {
        self.reader.position().byte()
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|err| Error::Format {
                path: self.path.clone(),
                reason: err.to_string(),
            })?;
        if !more {
            return Ok(None);
        }
        let record = &self.record;
        let line = record.position().map_or(0, ::csv::Position::line);
        let width = self.order.len();
        let raw = || {
            record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
                .join(&self.delimiter)
        };
        if record.len() != width {
            return Ok(Some(RecordRef::Broken {
                line,
                raw: raw(),
                reason: format!(
                    "{}:{line}: expected {width} fields, found {}",
                    self.file_name,
                    record.len()
                ),
            }));
        }
        let row = RecordRef::row(line, record, &self.order);
        if matches!(row, RecordRef::Row { text: Some(_), .. }) {
            return Ok(Some(row));
        }
        for (column, &at) in self.order.iter().enumerate() {
            if let Err(err) = std::str::from_utf8(&record[at]) {
                return Ok(Some(RecordRef::Broken {
                    line,
                    raw: raw(),
                    reason: format!(
                        "{}:{line}: invalid UTF-8 in column `{}` at byte {}",
                        self.file_name,
                        self.column_names[column],
                        err.valid_up_to()
                    ),
                }));
            }
        }
        Ok(Some(row))
    }
}

#[cfg(test)]
/// Parses CSV bytes for `table` into owned rows; `path` is only used in messages.
pub fn parse_csv(table: &Table, path: &Path, bytes: &[u8]) -> Result<Vec<SourceRow>> {
    let mut records = CsvRecords::new(table, path, bytes)?;
    let mut rows = Vec::new();
    while let Some(record) = records.next_record()? {
        rows.push(record.to_owned());
    }
    Ok(rows)
}

/// The file name of `path`, for messages (`orders.csv:12: ...`).
pub(super) fn file_name(path: &Path) -> String {
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
