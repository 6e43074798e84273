use std::path::{Path, PathBuf};

use super::csv::parse_csv;
use super::*;
use crate::idcard::{Project, compile};

fn project() -> Project {
    let text = "\
table: t
source: { format: csv, path: t.csv, rename: { amount_lenght: amount } }
topic: { name: raw_t }
schema:
  - { name: id, type: string, nullable: false }
  - { name: note, type: string }
  - { name: amount, type: \"decimal(10,2)\" }
key: [id]
mode: DIFF
";
    compile(&[(PathBuf::from("t.yaml"), text.to_owned())]).unwrap()
}

fn rows(bytes: &[u8]) -> Vec<SourceRow> {
    let project = project();
    parse_csv(&project.tables[0], Path::new("t.csv"), bytes).unwrap()
}

#[test]
fn survives_bom_partial_quoting_renamed_headers_and_multiline_cells() {
    let csv = "\u{feff}\"id\",\"note\",\"amount_lenght\"\n\"a\",\"two\nlines, and a comma\",1.5\nb,,\"2\"\n";
    let got = rows(csv.as_bytes());
    assert_eq!(
        got,
        vec![
            SourceRow::Row {
                line: 2,
                cells: vec![
                    Some("a".into()),
                    Some("two\nlines, and a comma".into()),
                    Some("1.5".into())
                ]
            },
            SourceRow::Row {
                line: 4,
                cells: vec![Some("b".into()), None, Some("2".into())]
            },
        ]
    );
}

#[test]
fn columns_are_put_in_schema_order() {
    let got = rows(b"amount_lenght,id,note\n3,x,y\n");
    assert_eq!(
        got,
        vec![SourceRow::Row {
            line: 2,
            cells: vec![Some("x".into()), Some("y".into()), Some("3".into())]
        }]
    );
}

#[test]
fn wrong_field_count_and_invalid_utf8_become_broken_rows() {
    let mut csv = b"id,note,amount\na,b\nc,d,1,extra\n".to_vec();
    csv.extend_from_slice(b"e,caf\xe9,2\nok,fine,3\n");
    let got = rows(&csv);
    assert_eq!(got.len(), 4);
    assert!(
        matches!(&got[0], SourceRow::Broken { line: 2, reason, .. } if reason.contains("expected 3 fields, found 2"))
    );
    assert!(
        matches!(&got[1], SourceRow::Broken { line: 3, reason, .. } if reason.contains("found 4"))
    );
    assert!(
        matches!(&got[2], SourceRow::Broken { line: 4, reason, raw } if reason.contains("invalid UTF-8 in column `note`") && raw.starts_with("e,caf"))
    );
    assert!(matches!(&got[3], SourceRow::Row { line: 5, .. }));
}

/// A row is checked as UTF-8 once as a whole, and its cells sliced from it: a character split
/// between two cells (each invalid alone, the two together valid) still makes the row broken;
/// the rows around it keep their characters.
#[test]
fn utf8_is_checked_per_cell_even_when_the_whole_record_is_valid() {
    let mut csv = b"id,note,amount_lenght\n".to_vec();
    csv.extend_from_slice(b"e,caf\xc3,\xa92\n");
    csv.extend_from_slice(b"f,d\xc3\xa9j\xc3\xa0,3\n");
    csv.extend_from_slice(b"g,na\xc3\xafve,4\n");
    let got = rows(&csv);
    assert!(
        matches!(&got[0], SourceRow::Broken { line: 2, reason, .. } if reason.contains("invalid UTF-8 in column `note`")),
        "{:?}",
        got[0]
    );
    let cells = |values: [&str; 3]| values.map(|v| Some(v.to_owned())).to_vec();
    assert_eq!(
        got[1..],
        [
            SourceRow::Row {
                line: 3,
                cells: cells(["f", "d\u{e9}j\u{e0}", "3"])
            },
            SourceRow::Row {
                line: 4,
                cells: cells(["g", "na\u{ef}ve", "4"])
            },
        ]
    );
}

#[test]
fn a_header_without_a_declared_column_is_an_error_naming_it() {
    let project = project();
    let err = parse_csv(&project.tables[0], Path::new("t.csv"), b"id,note\n").unwrap_err();
    assert!(err.to_string().contains("lacks column `amount`"), "{err}");
    let err = parse_csv(
        &project.tables[0],
        Path::new("t.csv"),
        b"id,note,amount,zzz\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`zzz` is not in the idcard"),
        "{err}"
    );
}

#[test]
fn produced_messages_are_keyed_json_with_the_ingestion_timestamp() {
    let project = project();
    let row = SourceRow::Row {
        line: 2,
        cells: vec![Some("k\"1".into()), None, Some("1.0".into())],
    };
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .to_utc();
    let record = produce::encode(&project.tables[0], &row, at);
    assert_eq!(record.key, b"k\"1");
    let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(value["id"], "k\"1");
    assert_eq!(value["note"], serde_json::Value::Null);
    assert_eq!(value["_ingestion_timestamp"], "2026-01-02T03:04:05.000000Z");
    assert_eq!(record.timestamp_ms, at.timestamp_millis());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Bytes that look like this table's CSV (header, quotes, delimiters, line ends, BOMs,
    /// invalid UTF-8), and plain noise.
    fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"id".to_vec()),
            Just(b"note".to_vec()),
            Just(b"amount_lenght".to_vec()),
            Just(b",".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b"\xff".to_vec()),
            Just(b"\0".to_vec()),
            "[a-z0-9 .]{0,6}".prop_map(String::into_bytes),
        ];
        prop_oneof![
            4 => prop::collection::vec(piece, 0..40).prop_map(|p| {
                let mut bytes = b"id,note,amount_lenght\n".to_vec();
                bytes.extend(p.concat());
                bytes
            }),
            1 => prop::collection::vec(any::<u8>(), 0..80),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any bytes: no panic; either a clear error naming the file, or one row or broken
        /// record (with its line and reason) per CSV record, and each becomes one message.
        #[test]
        fn any_bytes_become_rows_broken_records_or_a_clear_error(bytes in csv_bytes()) {
            let project = project();
            let table = &project.tables[0];
            match parse_csv(table, Path::new("t.csv"), &bytes) {
                Err(e) => prop_assert!(e.to_string().contains("t.csv"), "{}", e),
                Ok(rows) => {
                    for row in &rows {
                        if let SourceRow::Broken { reason, line, .. } = row {
                            prop_assert!(reason.contains(&format!("t.csv:{line}")), "{}", reason);
                        }
                        let record = produce::encode(table, row, chrono::Utc::now());
                        prop_assert!(!record.value.is_empty());
                    }
                }
            }
        }
    }
}
