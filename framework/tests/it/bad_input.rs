//! The bad-input corpus (`framework/tests/bad_input/`): every class of broken source file and
//! broken message gets a clear error naming the file (and the line), or reject rows with a
//! reason; nothing panics; rows in = bronze + rejects.

use std::path::{Path, PathBuf};

use framework::bus::{EmbeddedLog, Record};
use framework::lake::{Lake, Layer};

use crate::common::*;

fn corpus() -> PathBuf {
    repo().join("framework/tests/bad_input")
}

/// What a source file must lead to.
enum Outcome {
    /// The run fails; stderr names the file and says this.
    Refused(&'static str),
    /// The run succeeds: this many rows in bronze, rejects with these reasons (one each), this
    /// many rows quarantined in silver.
    Ingested {
        bronze: u64,
        rejects: &'static [&'static str],
        quarantined: u64,
    },
}

use Outcome::{Ingested, Refused};

const CSV_CASES: &[(&str, Outcome)] = &[
    ("empty.csv", Refused("the file is empty: no header line")),
    (
        "header_only.csv",
        Ingested {
            bronze: 0,
            rejects: &[],
            quarantined: 0,
        },
    ),
    (
        "duplicate_header.csv",
        Refused("line 1: column `order_status` appears twice in the header (fields 3 and 5)"),
    ),
    (
        "extra_column.csv",
        Refused(":1: column `coupon` is not in the idcard's schema"),
    ),
    (
        "missing_column.csv",
        Refused(":1: the header lacks column `order_status`"),
    ),
    (
        "non_utf8_header.csv",
        Refused("line 1: header field 3 is not valid UTF-8"),
    ),
    (
        "wrong_delimiter.csv",
        Refused("the file looks ';'-separated"),
    ),
    (
        "non_utf8_cell.csv",
        Ingested {
            bronze: 2,
            rejects: &["olist_orders_dataset.csv:3: invalid UTF-8 in column `customer_id`"],
            quarantined: 0,
        },
    ),
    (
        // A byte-order mark inside the file is part of the cell: the order id no longer
        // matches its pattern, and silver quarantines the row.
        "bom_mid_file.csv",
        Ingested {
            bronze: 3,
            rejects: &[],
            quarantined: 1,
        },
    ),
    (
        "crlf.csv",
        Ingested {
            bronze: 2,
            rejects: &[],
            quarantined: 0,
        },
    ),
    (
        "mixed_line_ends.csv",
        Ingested {
            bronze: 4,
            rejects: &[],
            quarantined: 0,
        },
    ),
    (
        "unterminated_quote.csv",
        Ingested {
            bronze: 1,
            rejects: &["olist_orders_dataset.csv:3: expected 8 fields, found 1"],
            quarantined: 0,
        },
    ),
    (
        "nul_bytes.csv",
        Ingested {
            bronze: 1,
            rejects: &[
                "column `order_purchase_timestamp`: \"2017-02-27\\011:33:35\" is not a valid timestamp",
            ],
            quarantined: 0,
        },
    ),
    (
        "wrong_field_count.csv",
        Ingested {
            bronze: 1,
            rejects: &[
                "olist_orders_dataset.csv:3: expected 8 fields, found 9",
                "olist_orders_dataset.csv:4: expected 8 fields, found 2",
            ],
            quarantined: 0,
        },
    ),
    (
        "wrong_types.csv",
        Ingested {
            bronze: 1,
            rejects: &[
                "column `order_purchase_timestamp`: \"27/02/2017\" is not a valid timestamp",
                "column `order_purchase_timestamp`: \"2017-13-45 99:99:99\" is not a valid timestamp",
            ],
            quarantined: 0,
        },
    ),
];

/// `run --table orders --until silver` on `data` into a fresh lake.
fn run_orders(lake: &Path, data: &Path) -> std::process::Output {
    let mut run = framework(lake);
    run.args(["run", "--table", "orders", "--until", "silver", "--data"])
        .arg(data);
    output(run)
}

fn check(name: &str, outcome: &Outcome, lake: &Path, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{name}: panic\n{stderr}");
    match outcome {
        Refused(message) => {
            assert!(!out.status.success(), "{name}: accepted");
            assert!(
                stderr.contains("olist_orders_dataset.csv") && stderr.contains(message),
                "{name}: expected {message:?} in\n{stderr}"
            );
            assert_eq!(count(lake, Layer::Bronze, "orders"), 0, "{name}: bronze");
        }
        Ingested {
            bronze,
            rejects,
            quarantined,
        } => {
            assert!(out.status.success(), "{name}: failed\n{stderr}");
            let messages = if lake.join("_bus/raw_orders").exists() {
                topic_messages(lake, "raw_orders", 3)
            } else {
                0
            };
            assert_eq!(
                count(lake, Layer::Bronze, "orders"),
                *bronze,
                "{name}: bronze"
            );
            assert_eq!(
                count(lake, Layer::Reject, "orders"),
                rejects.len() as u64,
                "{name}: rejects"
            );
            assert_eq!(
                bronze + rejects.len() as u64,
                messages,
                "{name}: rows in = bronze + rejects"
            );
            if !rejects.is_empty() {
                let reasons = query(lake, Layer::Reject, "orders", "SELECT _reason FROM t");
                for reason in *rejects {
                    assert!(
                        reasons.contains(reason),
                        "{name}: no {reason:?} in\n{reasons}"
                    );
                }
            }
            assert_eq!(
                count(lake, Layer::Quarantine, "orders"),
                *quarantined,
                "{name}: quarantined"
            );
            assert_eq!(
                count(lake, Layer::Silver, "orders"),
                bronze - quarantined,
                "{name}: silver"
            );
        }
    }
}

#[test]
fn every_broken_source_file_is_refused_clearly_or_its_rows_rejected_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (name, outcome) in CSV_CASES {
        let data = dir.path().join(name).join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(
            corpus().join("csv").join(name),
            data.join("olist_orders_dataset.csv"),
        )
        .unwrap();
        let lake = dir.path().join(name).join("lake");
        check(name, outcome, &lake, &run_orders(&lake, &data));
    }
    // A 10 MB cell (made here rather than committed): one row like any other.
    let data = dir.path().join("huge/data");
    std::fs::create_dir_all(&data).unwrap();
    let mut csv = std::fs::read(corpus().join("csv/crlf.csv")).unwrap();
    csv.extend_from_slice(b"a0000000000000000000000000000009,");
    csv.extend(std::iter::repeat_n(b'x', 10 << 20));
    csv.extend_from_slice(b",delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00\n");
    std::fs::write(data.join("olist_orders_dataset.csv"), csv).unwrap();
    let lake = dir.path().join("huge/lake");
    let huge = Ingested {
        bronze: 3,
        rejects: &[],
        quarantined: 0,
    };
    check("10 MB field", &huge, &lake, &run_orders(&lake, &data));
    let longest = query(
        &lake,
        Layer::Silver,
        "orders",
        "SELECT max(length(customer_id)) AS n FROM t",
    );
    assert!(longest.contains(&format!("| {} ", 10 << 20)), "{longest}");
}

#[test]
fn every_broken_message_lands_in_the_reject_table_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let log = EmbeddedLog::new(Lake::new(&lake).bus_dir().unwrap());
    log.ensure_topic("raw_orders", 3).unwrap();
    let good = |id: &str| {
        format!(
            r#"{{"order_id":"{id}","customer_id":"c1","order_status":"delivered","order_purchase_timestamp":"2017-02-27 11:33:35","order_approved_at":null,"order_delivered_carrier_date":null,"order_delivered_customer_date":null,"order_estimated_delivery_date":"2017-03-20 00:00:00","_ingestion_timestamp":"2026-12-01T10:00:00.000000Z","_source_line":2}}"#
        )
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "good".into(),
            good("a0000000000000000000000000000001").into_bytes(),
            "",
        ),
        (
            "truncated".into(),
            good("a0000000000000000000000000000002").as_bytes()[..60].to_vec(),
            "invalid JSON: EOF while parsing",
        ),
        (
            "wrong type".into(),
            good("a0000000000000000000000000000003")
                .replace(r#""customer_id":"c1""#, r#""customer_id":{"nested":1}"#)
                .into_bytes(),
            "column `customer_id`: expected a scalar, got an object",
        ),
        (
            "extra field".into(),
            good("a0000000000000000000000000000004")
                .replace(r#""order_id""#, r#""coupon":"X1","order_id""#)
                .into_bytes(),
            "unknown field `coupon` (not in the idcard's schema)",
        ),
        (
            "deep nesting".into(),
            good("a0000000000000000000000000000005")
                .replace(r#""c1""#, &deep)
                .into_bytes(),
            "column `customer_id`: expected a scalar, got an array",
        ),
        (
            "not JSON".into(),
            b"\xff\xfe binary".to_vec(),
            "invalid JSON",
        ),
        (
            "empty".into(),
            Vec::new(),
            "invalid JSON: EOF while parsing",
        ),
        (
            "not an object".into(),
            b"[1, 2, 3]".to_vec(),
            "invalid JSON",
        ),
        (
            "1 MB string".into(),
            good("a0000000000000000000000000000006")
                .replace(r#""c1""#, &format!("\"{}\"", "y".repeat(1 << 20)))
                .into_bytes(),
            "",
        ),
    ];
    let records: Vec<Record> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, value, _))| Record {
            key: format!("k{i}").into_bytes(),
            value: value.clone(),
            timestamp_ms: 1_764_583_200_000,
        })
        .collect();
    log.append("raw_orders", &records.iter().collect()).unwrap();
    let mut run = framework(&lake);
    run.args([
        "run",
        "--table",
        "orders",
        "--no-produce",
        "--until",
        "silver",
    ]);
    ok(run);
    let expected_rejects: Vec<&str> = cases
        .iter()
        .map(|(_, _, reason)| *reason)
        .filter(|r| !r.is_empty())
        .collect();
    assert_eq!(
        count(&lake, Layer::Bronze, "orders"),
        2,
        "the good and the 1 MB one"
    );
    assert_eq!(
        count(&lake, Layer::Reject, "orders"),
        expected_rejects.len() as u64
    );
    let reasons = query(
        &lake,
        Layer::Reject,
        "orders",
        "SELECT _key, _reason FROM t ORDER BY _key",
    );
    for (i, (name, _, reason)) in cases.iter().enumerate() {
        if reason.is_empty() {
            continue;
        }
        let line = reasons
            .lines()
            .find(|l| l.contains(&format!("| k{i} ")))
            .unwrap_or_else(|| panic!("{name} not rejected:\n{reasons}"));
        assert!(
            line.contains(reason),
            "{name}: expected {reason:?} in {line}"
        );
    }
}

/// `rejects` on a lake that never read the table is an error naming the lake: "0 rejected"
/// there said that nothing was lost (a mistyped --lake, say).
#[test]
fn rejects_of_a_table_the_lake_never_read_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut never = framework(&lake);
    never.args(["rejects", "--table", "sellers"]);
    let out = output(never);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("holds no bronze table `sellers`")
            && stderr.contains("is --lake right?"),
        "{stderr}"
    );
    let mut run = framework(&lake);
    run.args(["run", "--table", "sellers", "--until", "bronze", "--data"])
        .arg(sample());
    ok(run);
    let mut read = framework(&lake);
    read.args(["rejects", "--table", "sellers"]);
    let out = ok(read);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 row(s) rejected"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A broken file among the others (`run --all`, one table's file empty) stops the run with the
/// file's error alone: no panic from the other tables' work in flight when the process ends
/// (delta-rs's log reader panicked on a blocking thread when the runtime went under it, in 6 of
/// 10 such runs). Five runs, each on a fresh lake.
#[test]
fn a_broken_file_among_others_stops_the_run_with_its_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&sample(), &data);
    std::fs::write(data.join("olist_order_items_dataset.csv"), "").unwrap();
    for attempt in 0..5 {
        let lake = dir.path().join(format!("lake-{attempt}"));
        let mut run = framework(&lake);
        run.args(["run", "--all", "--data"]).arg(&data);
        let out = output(run);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "run {attempt}: accepted");
        assert!(
            stderr.contains("olist_order_items_dataset.csv: the file is empty"),
            "run {attempt}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "run {attempt}: a panic\n{stderr}"
        );
    }
}
