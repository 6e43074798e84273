use std::path::PathBuf;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Decimal128Type;

use super::*;
use crate::bus::Message;
use crate::idcard::compile;

fn table() -> crate::idcard::Table {
    let text = "\
table: t
source: { format: csv, path: t.csv }
topic: { name: raw_t }
schema:
  - { name: id, type: string, nullable: false }
  - { name: amount, type: \"decimal(10,2)\" }
  - { name: at, type: timestamp }
  - { name: day, type: date, format: \"%d/%m/%Y\" }
key: [id]
mode: DIFF
";
    compile(&[(PathBuf::from("t.yaml"), text.to_owned())])
        .unwrap()
        .tables
        .remove(0)
}

fn message(offset: u64, value: &str) -> Message {
    Message {
        partition: 0,
        offset,
        timestamp_ms: 1_000,
        key: b"k".to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[test]
fn good_rows_are_typed_and_bad_ones_rejected_with_the_reason() {
    let messages = vec![
        message(
            0,
            r#"{"id":"a","amount":"199.0","at":"2017-02-27 11:33:35","day":"31/12/2017","_ingestion_timestamp":"2026-01-01T00:00:00Z"}"#,
        ),
        message(1, r#"{"id":"b","amount":"12x","at":null,"day":null}"#),
        message(
            2,
            r#"{"id":"c","amount":1.5,"at":"2017-13-45 99:00:00","day":null}"#,
        ),
        message(3, r#"not json"#),
        message(
            4,
            r#"{"_raw":"x,y","_error":"t.csv:9: expected 4 fields, found 2","_source_line":"9"}"#,
        ),
        message(5, r#"{"id":"d","colour":"blue"}"#),
        message(6, r#"{"id":null,"amount":"1"}"#),
        message(7, r#"{"id":"e","amount":2,"day":"2017-12-31"}"#),
    ];
    let parsed = parse_messages(&table(), "raw_t", &messages, chrono::Utc::now()).unwrap();
    assert_eq!(parsed.rows.num_rows(), 1);
    let amount = parsed.rows.column(1).as_primitive::<Decimal128Type>();
    assert_eq!(amount.value(0), 19900);
    let reasons: Vec<String> = (0..parsed.rejects.num_rows())
        .map(|i| {
            parsed
                .rejects
                .column_by_name("_reason")
                .unwrap()
                .as_string::<i32>()
                .value(i)
                .to_owned()
        })
        .collect();
    assert_eq!(reasons.len(), 7, "{reasons:?}");
    assert!(
        reasons[0].contains("column `amount`: \"12x\" is not a valid decimal(10,2)"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("column `at`"), "{}", reasons[1]);
    assert!(reasons[2].starts_with("invalid JSON"), "{}", reasons[2]);
    assert_eq!(reasons[3], "t.csv:9: expected 4 fields, found 2");
    assert!(
        reasons[4].contains("unknown field `colour`"),
        "{}",
        reasons[4]
    );
    assert!(reasons[5].contains("`id`"), "{}", reasons[5]);
    assert!(reasons[6].contains("column `day`"), "{}", reasons[6]);
    let lines = parsed
        .rejects
        .column_by_name("_source_line")
        .unwrap()
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
    assert_eq!(lines.value(3), 9);
    assert!(lines.is_null(0));
}
