use std::path::PathBuf;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Decimal128Type;

use super::*;
use crate::bus::{Bytes, Message};
use crate::idcard::compile;

/// The one table of an idcard's text.
fn table_of(text: &str) -> crate::idcard::Table {
    compile(&[(PathBuf::from("t.yaml"), text.to_owned())])
        .unwrap()
        .tables
        .remove(0)
}

fn table() -> crate::idcard::Table {
    table_of(
        "\
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
",
    )
}

fn message(offset: u64, value: &str) -> Message {
    Message {
        partition: 0,
        offset,
        timestamp_ms: 1_000,
        key: Bytes::from_static(b"k"),
        value: Bytes::copy_from_slice(value.as_bytes()),
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

/// `_key` holds a message's key only where it is not the record's own key (its key columns
/// joined by `|`); a reject (here a null key column, a bad number) keeps its key.
#[test]
fn bronze_keeps_a_key_only_where_it_is_not_the_records_own() {
    let table = table_of(
        "\
table: t
source: { format: csv, path: t.csv }
topic: { name: raw_t }
schema:
  - { name: id, type: string, nullable: false }
  - { name: part, type: string }
  - { name: n, type: int }
key: [id, part]
mode: DIFF
",
    );
    let keyed = |offset: u64, key: &'static str, value: &str| Message {
        key: Bytes::from_static(key.as_bytes()),
        ..message(offset, value)
    };
    let messages = vec![
        keyed(0, "a|x", r#"{"id":"a","part":"x","n":"1"}"#),
        keyed(1, "b|", r#"{"id":"b","part":null,"n":"1"}"#),
        keyed(2, "c|y", r#"{"id":"c","part":"x","n":"1"}"#),
        keyed(3, "", r#"{"id":"d","part":"x","n":"1"}"#),
        keyed(4, "e", r#"{"id":"e","part":"x","n":"1"}"#),
        keyed(5, "f|x|", r#"{"id":"f","part":"x","n":"1"}"#),
        keyed(6, "g|x", r#"{"id":"g","part":"x","n":"seven"}"#),
    ];
    let parsed = parse_messages(&table, "raw_t", &messages, chrono::Utc::now()).unwrap();
    let rejected = parsed
        .rejects
        .column_by_name("_key")
        .unwrap()
        .as_string::<i32>();
    let reasons = parsed
        .rejects
        .column_by_name("_reason")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(
        rejected.iter().collect::<Vec<_>>(),
        [Some("b|"), Some("g|x")],
        "{reasons:?}"
    );
    let keys = parsed
        .rows
        .column_by_name("_key")
        .unwrap()
        .as_string::<i32>();
    let keys: Vec<Option<&str>> = keys.iter().collect();
    assert_eq!(keys, [None, Some("c|y"), Some(""), Some("e"), Some("f|x|")]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Values a message field may hold: JSON of every kind, and strings shaped like the
    /// table's types (so that some messages type cleanly and others fail on one column).
    fn field_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            "-?[0-9]{1,12}(\\.[0-9]{0,4})?".prop_map(Value::String),
            "20[0-9]{2}-[0-1][0-9]-[0-3][0-9]( [0-2][0-9]:[0-5][0-9]:[0-6][0-9])?"
                .prop_map(Value::String),
            "[0-3][0-9]/[0-1][0-9]/20[0-9]{2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_message() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("id".to_owned()),
            Just("amount".to_owned()),
            Just("at".to_owned()),
            Just("day".to_owned()),
            Just("_ingestion_timestamp".to_owned()),
            Just("_source_line".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop::collection::btree_map(key, field_value(), 0..7).prop_map(|fields| {
            serde_json::to_vec(&serde_json::Value::Object(fields.into_iter().collect())).unwrap()
        })
    }

    fn any_message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => json_message(),
            1 => prop::collection::vec(any::<u8>(), 0..64),
            // A valid message cut short.
            1 => json_message().prop_flat_map(|bytes| {
                let n = bytes.len();
                (Just(bytes), 0..=n).prop_map(|(b, cut)| b[..cut].to_vec())
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any batch of messages, whatever their bytes: no panic, and each message is a row or
        /// a reject with a reason.
        #[test]
        fn every_message_becomes_a_row_or_a_reject(values in prop::collection::vec(any_message(), 1..12)) {
            let messages: Vec<Message> = values
                .into_iter()
                .enumerate()
                .map(|(i, value)| Message {
                    partition: 0,
                    offset: i as u64,
                    timestamp_ms: 1_000,
                    key: Bytes::from_static(b"k"),
                    value: value.into(),
                })
                .collect();
            let parsed = parse_messages(&table(), "raw_t", &messages, chrono::Utc::now()).unwrap();
            prop_assert_eq!(parsed.rows.num_rows() + parsed.rejects.num_rows(), messages.len());
            let reasons = parsed.rejects.column_by_name("_reason").unwrap().as_string::<i32>();
            for i in 0..reasons.len() {
                prop_assert!(!reasons.value(i).is_empty());
            }
        }
    }
}

mod fast_path {
    use proptest::prelude::*;

    use super::*;
    use crate::source::SourceRow;

    /// What the JSON parser refuses, the scan does not take either: a raw control character in
    /// a string, a missing quote, trailing bytes.
    #[test]
    fn the_scan_leaves_invalid_json_to_the_parser() {
        let layout = super::super::message::Layout::new(&table());
        let tail = r#","amount":null,"at":null,"day":null,"_source_line":"1","_ingestion_timestamp":"2026-01-01T00:00:00Z"}"#;
        for value in [
            format!("{{\"id\":\"a\tb\"{tail}"),
            format!("{{\"id\":\"ab{tail}"),
            format!("{{\"id\":\"ab\"{tail} "),
        ] {
            let mut cells = Vec::new();
            assert!(
                super::super::message::read_fast(&layout, value.as_bytes(), &mut cells).is_none(),
                "{value}"
            );
        }
        let good = format!("{{\"id\":\"ab\"{tail}");
        let mut cells = Vec::new();
        assert!(super::super::message::read_fast(&layout, good.as_bytes(), &mut cells).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Messages in the producer's layout read the same by the scan and by the JSON parser,
        /// whatever the cells hold (empty, quotes, backslashes, control characters, any
        /// Unicode); the scan takes every message without an escape. Written by the producer
        /// and, with empty strings too, by serde_json.
        #[test]
        fn the_scan_reads_what_the_parser_reads(
            cells in prop::collection::vec(prop::option::of(prop_oneof![Just(String::new()), ".{0,8}"]), 4)
        ) {
            let table = table();
            let row = SourceRow::Row { line: 7, cells: cells.clone() };
            let produced = crate::source::produce::encode(&table, &row, chrono::Utc::now()).value;
            let names = ["id", "amount", "at", "day"];
            let mut written = String::from("{");
            for (name, cell) in names.iter().zip(&cells) {
                written += &format!("\"{name}\":{},", serde_json::to_string(cell).unwrap());
            }
            written += r#""_source_line":"7","_ingestion_timestamp":"2026-01-01T00:00:00Z"}"#;
            let layout = super::super::message::Layout::new(&table);
            let escapes = cells.iter().flatten().any(|c| c.chars().any(|ch| ch == '"' || ch == '\\' || ch < ' '));
            for value in [produced, written.into_bytes()] {
                let mut scanned = Vec::new();
                let fast = super::super::message::read_fast(&layout, &value, &mut scanned);
                let parsed = super::super::message::read(&table, &value)
                    .unwrap_or_else(|_| panic!("the parser reads the message"));
                prop_assert_eq!(fast.is_some(), !escapes);
                if let Some((timestamp, line)) = fast {
                    let parsed_cells: Vec<Option<&str>> = parsed.cells.iter().map(|c| c.as_deref()).collect();
                    prop_assert_eq!(scanned, parsed_cells);
                    prop_assert_eq!(Some(timestamp), parsed.timestamp.as_deref());
                    prop_assert_eq!(Some(line), parsed.source_line);
                }
            }
        }
    }
}

mod columns {
    use proptest::prelude::*;

    use super::*;
    use crate::bus::{Chunk, Columns};

    /// A cell: empty, null, a valid value of one of the types, or anything.
    fn cell() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            Just(String::new()),
            Just("1.50".to_owned()),
            Just("31/12/2017".to_owned()),
            Just("2017-02-27 11:33:35".to_owned()),
            ".{0,6}",
        ])
    }

    /// A message as the producer sends it: a row (with an `_ingestion_timestamp` that may not be
    /// RFC 3339, or none) or a broken record.
    #[derive(Debug, Clone)]
    enum Sent {
        Row {
            cells: Vec<Option<String>>,
            timestamp: Option<String>,
        },
        Broken {
            raw: String,
            error: String,
        },
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            6 => (
                prop::collection::vec(cell(), 4),
                prop::option::of(prop_oneof![
                    Just("2026-01-01T00:00:00.000000Z".to_owned()),
                    Just("2026-01-01T00:00:01.000000Z".to_owned()),
                    Just("yesterday".to_owned()),
                ])
            )
                .prop_map(|(cells, timestamp)| Sent::Row { cells, timestamp }),
            1 => (".{0,6}", prop_oneof![Just(String::new()), ".{1,6}"])
                .prop_map(|(raw, error)| Sent::Broken { raw, error }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A block of columns is typed exactly as the JSON messages it stands for: the same
        /// rows, and the same rejects with the same reasons, payloads and keys (broken records,
        /// an unknown field, timestamps that are not RFC 3339, empty texts as null, keys that
        /// are and are not the record's own).
        #[test]
        fn a_block_of_columns_types_as_its_json_messages_do(
            sent in prop::collection::vec(sent(), 1..24),
            unknown in prop::option::of(prop_oneof![Just("colour"), Just("_colour")]),
        ) {
            let table = table();
            let mut fields = vec!["_raw", "_error", "id", "amount", "at", "day"];
            fields.extend(unknown);
            fields.extend(["_source_line", "_ingestion_timestamp"]);
            // Keyed as the producer keys: by `id`, declared, so the log stores only the keys
            // that are not the record's own; every third row has another key.
            let mut columns = Columns::new(&fields, 1, sent.len()).key_of(&["id"], "|");
            for (index, message) in sent.iter().enumerate() {
                let line = index.to_string();
                let mut cells: Vec<Option<&str>> = match message {
                    Sent::Row { cells, .. } => [None, None]
                        .into_iter()
                        .chain(cells.iter().map(|c| c.as_deref()))
                        .collect(),
                    Sent::Broken { raw, error } => {
                        vec![Some(raw.as_str()), Some(error.as_str()), None, None, None, None]
                    }
                };
                if unknown.is_some() {
                    cells.push((line.len() % 2 == 0).then_some("blue"));
                }
                let timestamp = match message {
                    Sent::Row { timestamp, .. } => timestamp.as_deref(),
                    Sent::Broken { .. } => Some("2026-01-01T00:00:00.000000Z"),
                };
                let key = match message {
                    Sent::Row { cells, .. } if index % 3 != 0 => {
                        cells[0].clone().unwrap_or_default()
                    }
                    _ => format!("k{line}"),
                };
                cells.extend([Some(line.as_str()), timestamp]);
                // A row keyed by its own key, as the producer pushes it, or as any key.
                match (message, index % 3) {
                    (Sent::Row { .. }, 1) => columns.push_own(1_000 + line.len() as i64, &key, cells),
                    _ => columns.push(1_000 + line.len() as i64, &key, cells),
                }
            }
            // Through the log's encoding, as bronze reads a block; the batch as stored is what
            // the log hands a reader in the same process.
            let (stored, bytes) =
                crate::bus::columns::encode(&columns.finish().remove(0)).unwrap();
            let batch = crate::bus::columns::decode(bytes).unwrap();
            prop_assert_eq!(&stored, &batch);
            let now = chrono::Utc::now();
            let chunk = Chunk::Columns { partition: 0, first: 10, batch: batch.clone() };
            let messages = chunk.into_messages();
            let by_json = parse_messages(&table, "raw_t", &messages, now).unwrap();
            let by_columns =
                super::super::parse::parse_columns(&table, "raw_t", 0, 10, &batch, now).unwrap();
            prop_assert_eq!(&by_columns.rows, &by_json.rows);
            prop_assert_eq!(&by_columns.rejects, &by_json.rejects);
            prop_assert_eq!(
                by_json.rows.num_rows() + by_json.rejects.num_rows(),
                sent.len()
            );
        }
    }
}

/// Bronze following a producer stores whole batches only; the rest once producing is done.
#[tokio::test]
async fn while_a_table_is_produced_bronze_stores_only_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let lake = crate::lake::Lake::new(dir.path());
    let log = crate::bus::EmbeddedLog::new(lake.bus_dir().unwrap());
    let bus = crate::bus::Bus::Embedded(log.clone());
    let table = table();
    bus.ensure_topic(table.topic(), 1).unwrap();
    let mut batch = crate::bus::Batch::default();
    for i in 0..250 {
        let value = format!(r#"{{"id": "k{i}", "amount": "1.50"}}"#);
        batch.push(format!("k{i}").as_bytes(), value.as_bytes(), 1_000);
    }
    bus.send(table.topic(), &batch).unwrap();
    let options = BronzeOptions {
        batch_size: 100,
        ..BronzeOptions::default()
    };
    let whole = ingest_whole_batches(&log, &lake, &table, &options, &|_, _| {})
        .await
        .unwrap();
    assert_eq!((whole.rows, whole.commits), (200, 2));
    let again = ingest_whole_batches(&log, &lake, &table, &options, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(again.messages, 0, "the 50 left are not a whole batch");
    let rest = ingest(&bus, &lake, &table, &options, &|_, _| {})
        .await
        .unwrap();
    assert_eq!((rest.rows, rest.commits), (50, 1));
    assert_eq!(
        lake.count(crate::lake::Layer::Bronze, "t").await.unwrap(),
        250
    );
}

/// A decimal with more fraction digits than its scale is rounded to it, half away from zero,
/// as SQL's cast to `decimal(p,s)` does (Postgres, Spark); one with more integer digits than
/// `p - s` allows is a reject, as is a number written in JSON with too many digits.
#[test]
fn a_decimal_rounds_to_its_scale_and_overflows_to_a_reject() {
    let messages = vec![
        message(0, r#"{"id":"a","amount":"1.005"}"#),
        message(1, r#"{"id":"b","amount":"-1.005"}"#),
        message(2, r#"{"id":"c","amount":1.004}"#),
        message(3, r#"{"id":"d","amount":"123456789.5"}"#),
    ];
    let parsed = parse_messages(&table(), "raw_t", &messages, chrono::Utc::now()).unwrap();
    let amount = parsed.rows.column(1).as_primitive::<Decimal128Type>();
    let values: Vec<i128> = (0..parsed.rows.num_rows())
        .map(|i| amount.value(i))
        .collect();
    assert_eq!(values, [101, -101, 100]);
    let reason = parsed
        .rejects
        .column_by_name("_reason")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_owned();
    assert_eq!(parsed.rejects.num_rows(), 1);
    assert!(
        reason.contains("column `amount`: \"123456789.5\" is not a valid decimal(10,2)"),
        "{reason}"
    );
}
