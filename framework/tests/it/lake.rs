//! `framework run --all` on the real sample: every table, the right rows, idempotent, readable by
//! another Delta implementation.

use std::process::Command;

use framework::lake::Layer;

use crate::common::*;

/// Silver content without the bookkeeping columns, in key order; a randomized PII column as
/// its plaintext (a re-sent row gets a new nonce, so its ciphertext differs by design).
fn silver_content(lake: &std::path::Path, table: &str) -> String {
    let project = project();
    let t = project.table(table).unwrap();
    let randomized: Vec<String> = t
        .columns
        .iter()
        .filter(|c| {
            c.pii
                .as_ref()
                .is_some_and(|p| p.mode == framework::pii::PiiMode::Randomized)
        })
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    if !randomized.is_empty() {
        let keys = framework::pii::keyring(&project, &repo()).unwrap();
        let ctx = framework::lake::session();
        framework::pii::udf::register(&ctx, &keys);
        let sql = format!(
            "SELECT * EXCLUDE (_sequence, _partition, _offset, {list}), {plain} FROM t ORDER BY {order}",
            list = randomized.join(", "),
            plain = randomized
                .iter()
                .map(|c| format!("pii_decrypt({c}) AS {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            order = t
                .key()
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        return runtime().block_on(async {
            assert!(
                framework::lake::Lake::new(lake)
                    .register(&ctx, Layer::Silver, table, "t")
                    .await
                    .unwrap()
            );
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            deltalake::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        });
    }
    let order = t
        .key()
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT * EXCLUDE (_sequence, _partition, _offset) FROM t ORDER BY {order}");
    let leaves: Vec<_> = t
        .columns
        .iter()
        .flat_map(|c| c.nested_pii.iter().map(move |n| (c.name.as_str(), n)))
        .filter(|(_, n)| n.pii.mode == framework::pii::PiiMode::Randomized)
        .collect();
    if !leaves.is_empty() {
        // Randomized leaves inside nested columns: the rows as JSON with those leaves decrypted.
        let keys = framework::pii::keyring(&project, &repo()).unwrap();
        let batches = batches(lake, Layer::Silver, table, &sql);
        let mut writer = deltalake::arrow::json::ArrayWriter::new(Vec::new());
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
        let mut rows: Vec<serde_json::Value> =
            serde_json::from_slice(&writer.into_inner()).unwrap();
        fn open(
            value: &mut serde_json::Value,
            steps: &[framework::idcard::model::Step],
            f: &dyn Fn(&str) -> String,
        ) {
            use framework::idcard::model::Step;
            match steps.split_first() {
                None => {
                    if let Some(text) = value.as_str() {
                        *value = f(text).into();
                    }
                }
                Some((Step::Field(name), rest)) => {
                    if let Some(inner) = value.get_mut(name) {
                        open(inner, rest, f);
                    }
                }
                Some((Step::Each, rest)) => {
                    for item in value.as_array_mut().into_iter().flatten() {
                        open(item, rest, f);
                    }
                }
            }
        }
        let decrypt = |text: &str| String::from_utf8(keys.decrypt_any(text).unwrap()).unwrap();
        for row in &mut rows {
            for (column, leaf) in &leaves {
                open(&mut row[*column], &leaf.steps, &decrypt);
            }
        }
        return serde_json::to_string_pretty(&rows).unwrap();
    }
    query(lake, Layer::Silver, table, &sql)
}

#[test]
fn run_all_builds_every_table_with_the_distinct_keys_of_the_csvs_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let project = project();
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    let out = ok(run);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("total"), "{summary}");
    // Every check ran once what it reads was in: 13 bronze and 8 silver checks once their
    // tables were refined, 24 gold ones (expectations/ and models/gold/schema.yml) once their
    // models were built. A check started too early would be left out as reading a table not
    // loaded yet, or fail on a model not built yet.
    assert!(!summary.contains("not loaded yet"), "{summary}");
    let checked = query(
        &lake,
        Layer::Quality,
        "results",
        "SELECT layer, count(*) AS n FROM t WHERE passed GROUP BY layer ORDER BY layer",
    );
    assert!(
        checked.contains("| bronze | 13 |")
            && checked.contains("| silver | 8  |")
            && checked.contains("| gold   | 24 |"),
        "{checked}"
    );

    let mut first = Vec::new();
    for table in project.names() {
        let expected = distinct_keys_from_csv(&sample(), &project, table);
        assert_eq!(
            count(&lake, Layer::Silver, table),
            expected,
            "silver {table} vs distinct CSV keys"
        );
        assert_eq!(
            count(&lake, Layer::Quarantine, table),
            0,
            "quarantine {table}"
        );
        assert_eq!(count(&lake, Layer::Reject, table), 0, "reject {table}");
        let t = project.table(table).unwrap();
        let messages = topic_messages(&lake, t.topic(), t.config.topic.partitions);
        assert_eq!(
            count(&lake, Layer::Bronze, table),
            messages,
            "bronze {table} holds every message"
        );
        first.push((table, messages, silver_content(&lake, table)));
    }
    // A zip prefix that lost its leading zero in the CSV is padded back (at the edge, before
    // it is encrypted: pii.rs decrypts silver and compares with the padded source).
    // Enrichment: every product with a translated category has its English name.
    let english = query(
        &lake,
        Layer::Silver,
        "products",
        "SELECT count(*) FILTER (WHERE product_category_name_english IS DISTINCT FROM 'health_beauty') AS wrong, \
         count(*) AS n FROM t WHERE product_category_name = 'beleza_saude'",
    );
    let beauty = csv_count("olist_products_dataset.csv", "product_category_name", |c| {
        c == "beleza_saude"
    });
    assert!(beauty > 0);
    assert!(
        english.contains(&format!("| 0     | {beauty} ")),
        "{english}"
    );
    assert_eq!(
        count(&lake, Layer::Silver, "customers_unique"),
        query_count_distinct(&lake, "customers", "customer_unique_id")
    );

    // Second run: the same files are not sent again.
    let mut again = framework(&lake);
    again.args(["run", "--all", "--data"]).arg(sample());
    let out = ok(again);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for table in project.names() {
        let t = project.table(table).unwrap();
        assert!(
            stdout.contains(&format!(
                "produce {table}: {} was already ingested unchanged",
                t.config.source.path
            )),
            "{stdout}"
        );
    }
    for (table, messages_before, _) in &first {
        let t = project.table(table).unwrap();
        let messages = topic_messages(&lake, t.topic(), t.config.topic.partitions);
        assert_eq!(
            messages, *messages_before,
            "{table}: the unchanged file was sent again"
        );
    }
    // Third run: sent again on request; silver does not change.
    let mut resend = framework(&lake);
    resend
        .args(["run", "--all", "--resend", "--data"])
        .arg(sample());
    ok(resend);
    for (table, messages_before, content_before) in first {
        let t = project.table(table).unwrap();
        let messages_after = topic_messages(&lake, t.topic(), t.config.topic.partitions);
        assert!(messages_after > messages_before);
        assert_eq!(
            count(&lake, Layer::Bronze, table),
            messages_after,
            "bronze {table} grew by the second run's messages"
        );
        assert_eq!(
            silver_content(&lake, table),
            content_before,
            "silver {table} changed on a re-run"
        );
    }
}

fn query_count_distinct(lake: &std::path::Path, table: &str, column: &str) -> u64 {
    let out = query(
        lake,
        Layer::Silver,
        table,
        &format!("SELECT count(DISTINCT {column}) AS n FROM t"),
    );
    out.lines()
        .nth(3)
        .unwrap()
        .trim_matches(|c| c == '|' || c == ' ')
        .parse()
        .unwrap()
}

/// Checks that every message of `table`'s 3-partition topic is in bronze or in the reject table
/// (rows in = bronze + rejects) and returns the distinct (source line, reason) pairs of the rejects.
fn reject_reasons(lake: &std::path::Path, table: &str, topic: &str) -> String {
    let messages = topic_messages(lake, topic, 3);
    let bronze = count(lake, Layer::Bronze, table);
    let rejects = count(lake, Layer::Reject, table);
    assert_eq!(
        bronze + rejects,
        messages,
        "{table}: rows in = bronze + rejects"
    );
    query(
        lake,
        Layer::Reject,
        table,
        "SELECT DISTINCT _source_line, _reason FROM t ORDER BY _source_line",
    )
}

#[test]
fn broken_csv_rows_land_in_the_reject_table_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let header = "order_id,customer_id,order_status,order_purchase_timestamp,order_approved_at,order_delivered_carrier_date,order_delivered_customer_date,order_estimated_delivery_date\n";
    let mut csv = header.as_bytes().to_vec();
    csv.extend_from_slice(b"a0000000000000000000000000000001,c1,delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00\n");
    csv.extend_from_slice(b"a0000000000000000000000000000002,c2,delivered,2017-02-27 11:33:35\n"); // too few fields
    csv.extend_from_slice(
        b"a0000000000000000000000000000003,c3,delivered,not a time,,,,2017-03-20 00:00:00\n",
    );
    csv.extend_from_slice(b"a0000000000000000000000000000004,c\xff4,delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00\n");
    csv.extend_from_slice(b"a0000000000000000000000000000005,c5,delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00,extra\n");
    csv.extend_from_slice(
        b"a0000000000000000000000000000006,c6,shipped,2017-02-28 10:00:00,,,,2017-03-21 00:00:00\n",
    );
    std::fs::write(data.join("olist_orders_dataset.csv"), csv).unwrap();
    let items = "order_id,order_item_id,product_id,seller_id,shipping_limit_date,price,freight_value\n\
        a0000000000000000000000000000001,1,p1,s1,2017-03-01 00:00:00,199.0,8.54\n\
        a0000000000000000000000000000001,2,p1,s1,2017-03-01 00:00:00,12,3x\n\
        a0000000000000000000000000000001,three,p1,s1,2017-03-01 00:00:00,12,3\n";
    std::fs::write(data.join("olist_order_items_dataset.csv"), items).unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args([
        "run",
        "--table",
        "orders",
        "--table",
        "order_items",
        "--seed",
        "7",
        "--data",
    ])
    .arg(&data);
    ok(run);
    let item_reasons = reject_reasons(&lake, "order_items", "raw_order_items");
    assert_eq!(count(&lake, Layer::Silver, "order_items"), 1);
    assert!(
        item_reasons.contains("column `freight_value`: \"3x\" is not a valid decimal(18,2)"),
        "{item_reasons}"
    );
    assert!(
        item_reasons.contains("column `order_item_id`: \"three\" is not a valid int"),
        "{item_reasons}"
    );
    let reasons = reject_reasons(&lake, "orders", "raw_orders");
    assert_eq!(count(&lake, Layer::Silver, "orders"), 2);
    for expected in [
        "expected 8 fields, found 4",
        "column `order_purchase_timestamp`: \"not a time\" is not a valid timestamp",
        "invalid UTF-8 in column `customer_id`",
        "expected 8 fields, found 9",
    ] {
        assert!(
            reasons.contains(expected),
            "missing {expected:?} in\n{reasons}"
        );
    }
    for line in [3, 4, 5, 6] {
        assert!(
            reasons.contains(&format!("| {line} ")),
            "line {line} not rejected:\n{reasons}"
        );
    }
}

#[test]
fn every_table_reads_back_cell_for_cell_with_the_python_deltalake_package() {
    let python = std::env::var("FRAMEWORK_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FRAMEWORK_TEST_PYTHON is not set: run the tests with scripts/test, which makes the \
             venv (deltalake, pyarrow) and sets it"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    // Rejects and quarantined rows too: broken and failing orders into the same lake.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("olist_orders_dataset.csv"),
        "order_id,customer_id,order_status,order_purchase_timestamp,order_approved_at,order_delivered_carrier_date,order_delivered_customer_date,order_estimated_delivery_date\n\
         b0000000000000000000000000000001,c1,teleported,2017-02-27 11:33:35,,,,2017-03-20 00:00:00\n\
         b0000000000000000000000000000002,c2,delivered,yesterday,,,,2017-03-20 00:00:00\n",
    )
    .unwrap();
    let mut broken = framework(&lake);
    broken
        .args(["run", "--table", "orders", "--until", "silver", "--data"])
        .arg(&data);
    ok(broken);

    let dump = dir.path().join("dump");
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/py/delta_dump.py"))
        .arg(&lake)
        .arg(&dump);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let project = project();
    let mut expected: Vec<String> = Vec::new();
    for table in project.names() {
        expected.push(format!("bronze/{table}"));
        expected.push(format!("silver/{table}"));
    }
    expected.extend(
        [
            "reject/orders",
            "quarantine/orders",
            "silver/customers_unique",
            "gold/gold_daily_sales",
            "gold/gold_seller_performance",
            "gold/gold_customer_rfm",
            "gold/gold_product_analytics",
            "gold/gold_delivery_performance",
            "quality/results",
        ]
        .map(str::to_owned),
    );
    expected.sort();
    assert_eq!(found, expected, "tables the Python reader found");
    for path in &found {
        let (layer, table) = path.split_once('/').unwrap();
        let layer = match layer {
            "bronze" => Layer::Bronze,
            "silver" => Layer::Silver,
            "reject" => Layer::Reject,
            "quarantine" => Layer::Quarantine,
            "gold" => Layer::Gold,
            _ => Layer::Quality,
        };
        let theirs = parquet_rows(&dump.join(format!("{path}.parquet")));
        let ours = rows(&lake, layer, table);
        assert!(!ours.is_empty(), "{path} is empty");
        assert_eq!(ours.len(), theirs.len(), "{path}: row count");
        if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
            panic!(
                "{path}: rows differ\n ours: {}\ntheirs: {}",
                ours[i], theirs[i]
            );
        }
    }
}

/// Every row of a Parquet file as text (`a | b | c`, nulls as `null`), sorted, like [`rows`].
fn parquet_rows(path: &std::path::Path) -> Vec<String> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    batch_rows(&batches)
}

#[test]
fn rows_failing_a_quarantine_expectation_move_to_quarantine_with_the_rule_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let header = "order_id,customer_id,order_status,order_purchase_timestamp,order_approved_at,order_delivered_carrier_date,order_delivered_customer_date,order_estimated_delivery_date\n";
    let rows = [
        "a0000000000000000000000000000001,c1,delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00",
        "a0000000000000000000000000000002,c2,teleported,2017-02-27 11:33:35,,,,2017-03-20 00:00:00",
        "NOT-A-HEX-ID,c3,delivered,2017-02-27 11:33:35,,,,2017-03-20 00:00:00",
        "a0000000000000000000000000000004,c4,shipped,,,,,2017-03-20 00:00:00",
    ];
    std::fs::write(
        data.join("olist_orders_dataset.csv"),
        format!("{header}{}\n", rows.join("\n")),
    )
    .unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    // `run` sends each source row once: one quarantined row per bad source row.
    run.args(["run", "--table", "orders", "--data"]).arg(&data);
    let out = ok(run);
    assert_eq!(
        count(&lake, Layer::Silver, "orders"),
        1,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rules = query(
        &lake,
        Layer::Quarantine,
        "orders",
        "SELECT DISTINCT order_id, _failed_rule FROM t ORDER BY order_id",
    );
    for expected in [
        "| NOT-A-HEX-ID                     | order_id_matches ",
        "| a0000000000000000000000000000002 | order_status_in_set ",
        "| a0000000000000000000000000000004 | order_purchase_timestamp_not_null ",
    ] {
        assert!(rules.contains(expected), "missing {expected:?} in\n{rules}");
    }
    // Re-running does not quarantine the same messages again.
    let before = count(&lake, Layer::Quarantine, "orders");
    let mut again = framework(&lake);
    again.args(["run", "--table", "orders", "--no-produce"]);
    ok(again);
    assert_eq!(count(&lake, Layer::Quarantine, "orders"), before);
}

/// The codecs of the Parquet files under `dir` (recursively).
fn codecs(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(codecs(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            for group in reader.metadata().row_groups() {
                for column in group.columns() {
                    out.insert(format!("{:?}", column.compression()));
                }
            }
        }
    }
    out
}

/// Parquet files are LZ4_RAW unless `FRAMEWORK_PARQUET_COMPRESSION` says `snappy` (for readers
/// before Spark 3.4) or `zstd`, but for the columns the codec would not shrink (silver's
/// and bronze's hexadecimal ids); another value stops the command before it writes anything.
#[test]
fn the_parquet_codec_is_lz4_raw_unless_the_environment_picks_another() {
    let dir = tempfile::tempdir().unwrap();
    for (choice, expected) in [(None, "LZ4_RAW"), (Some("snappy"), "SNAPPY")] {
        let lake = dir.path().join(choice.unwrap_or("default"));
        let mut run = framework(&lake);
        run.args(["run", "--table", "sellers", "--until", "silver", "--data"])
            .arg(sample());
        if let Some(choice) = choice {
            run.env("FRAMEWORK_PARQUET_COMPRESSION", choice);
        }
        ok(run);
        for layer in ["bronze", "silver"] {
            // The ids, which no codec of these shrinks, are stored uncompressed.
            let mut found = codecs(&lake.join(layer).join("sellers"));
            assert!(
                found.remove("UNCOMPRESSED"),
                "{layer} with {choice:?}: seller_id is compressed"
            );
            assert_eq!(
                found.into_iter().collect::<Vec<_>>(),
                vec![expected.to_owned()],
                "{layer} with {choice:?}"
            );
        }
    }
    // A MERGE (a changed order) writes with the same codec.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let orders = "olist_orders_dataset.csv";
    std::fs::copy(sample().join(orders), data.join(orders)).unwrap();
    let lake = dir.path().join("zstd");
    for delivery in ["first", "one order changed"] {
        if delivery != "first" {
            let text = std::fs::read_to_string(data.join(orders)).unwrap();
            let (header, rows) = text.split_once('\n').unwrap();
            let (first, rest) = rows.split_once('\n').unwrap();
            let changed = first.replacen(",delivered,", ",canceled,", 1);
            assert_ne!(changed, first, "the sample's first order is delivered");
            std::fs::write(data.join(orders), format!("{header}\n{changed}\n{rest}")).unwrap();
        }
        let mut run = framework(&lake);
        run.args(["run", "--table", "orders", "--until", "silver", "--data"])
            .arg(&data)
            .env("FRAMEWORK_PARQUET_COMPRESSION", "zstd");
        ok(run);
    }
    let files = parquet_files(&lake.join("silver").join("orders"));
    assert_eq!(
        files, 2,
        "the first load's file and the one the MERGE wrote"
    );
    let found = codecs(&lake.join("silver").join("orders"));
    assert!(
        found.len() == 1 && found.iter().all(|c| c.starts_with("ZSTD")),
        "{found:?}"
    );
    let lake = dir.path().join("bad");
    let mut run = framework(&lake);
    run.args(["run", "--table", "sellers", "--data"])
        .arg(sample())
        .env("FRAMEWORK_PARQUET_COMPRESSION", "gzip");
    let out = output_within(run, std::time::Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("FRAMEWORK_PARQUET_COMPRESSION=\"gzip\"") && stderr.contains("snappy"),
        "{stderr}"
    );
    assert!(!lake.exists(), "nothing written");
}

/// `--until produce` only fills the topics: every source row is a message and no layer is
/// written; a later `--no-produce` run ingests exactly those messages. `--no-produce --until
/// produce` is refused with a hint.
#[test]
fn until_produce_fills_the_topics_and_a_later_run_consumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut produce = framework(&lake);
    produce
        .args(["run", "--table", "orders", "--until", "produce", "--data"])
        .arg(sample());
    ok(produce);
    let mut want = csv_values("olist_orders_dataset.csv", "order_id");
    assert_eq!(
        topic_messages(&lake, "raw_orders", 3),
        want.len() as u64,
        "one message per source row"
    );
    let opened =
        runtime().block_on(framework::lake::Lake::new(&lake).open(Layer::Bronze, "orders"));
    assert!(opened.unwrap().is_none(), "bronze was written");

    let mut ingest = framework(&lake);
    ingest.args([
        "run",
        "--table",
        "orders",
        "--no-produce",
        "--until",
        "bronze",
    ]);
    ok(ingest);
    let mut got = batch_rows(&batches(
        &lake,
        Layer::Bronze,
        "orders",
        "SELECT order_id FROM t",
    ));
    got.sort();
    want.sort();
    assert_eq!(got, want, "bronze holds the produced rows once each");

    let mut nothing = framework(&lake);
    nothing.args(["run", "--all", "--no-produce", "--until", "produce"]);
    let out = output(nothing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("nothing to do") && stderr.contains("hint:"),
        "{stderr}"
    );

    // A bronze commit of no messages would never advance (it grew memory without end), and a
    // size past u64 overflowed.
    for size in ["0", "18446744073709551615"] {
        let mut zero = framework(&lake);
        zero.args([
            "run",
            "--table",
            "orders",
            "--no-produce",
            "--batch-size",
            size,
        ]);
        let out = output_within(zero, std::time::Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{size}: {stderr}");
        assert!(
            stderr.contains("--batch-size") && stderr.contains("1..=1000000000"),
            "{stderr}"
        );
    }
}

/// `framework vacuum` deletes the files a commit replaced only once they are older than the
/// retention: by default (7 days) nothing goes; with `--retention-s 0` the previous builds of
/// the gold models go, each table's folder then holds exactly the live files its log lists
/// (read by the Python deltalake package), and every model reads the same rows as before. An
/// unknown table is refused with the known ones.
#[test]
fn vacuum_deletes_the_replaced_files_past_the_retention_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    // Every model built again over its first build.
    let mut build = framework(&lake);
    build.args(["build", "--full-refresh"]);
    ok(build);
    let models = GOLD_MODELS;
    let before: Vec<Vec<String>> = models.iter().map(|m| rows(&lake, Layer::Gold, m)).collect();
    let folders: Vec<String> = models.iter().map(|m| format!("gold/{m}")).collect();
    let folders: Vec<&str> = folders.iter().map(String::as_str).collect();
    let on_disk = || -> Vec<Vec<String>> {
        folders
            .iter()
            .map(|f| files_on_disk(&lake.join(f)))
            .collect()
    };
    let first = on_disk();
    assert!(first.iter().all(|files| files.len() >= 2), "{first:?}");
    let mut kept = framework(&lake);
    kept.arg("vacuum");
    let out = String::from_utf8(ok(kept).stdout).unwrap();
    assert!(out.contains(", 0 files deleted"), "{out}");
    assert_eq!(on_disk(), first);
    let mut now = framework(&lake);
    now.args(["vacuum", "--retention-s", "0"]);
    let out = String::from_utf8(ok(now).stdout).unwrap();
    let logs = live_and_vacuumed(&lake, &folders);
    for (folder, files) in folders.iter().zip(on_disk()) {
        assert_eq!(logs[folder]["live"], serde_json::json!(files), "{folder}");
        let deleted = logs[folder]["vacuumed"].as_u64().unwrap();
        assert!(deleted > 0, "{folder}: {logs}");
        assert!(out.contains(&format!("  {folder}: {deleted}\n")), "{out}");
    }
    let after: Vec<Vec<String>> = models.iter().map(|m| rows(&lake, Layer::Gold, m)).collect();
    assert_eq!(after, before);
    let mut unknown = framework(&lake);
    unknown.args(["vacuum", "--table", "orders,nope"]);
    let out = unknown.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("unknown table `nope`")
            && stderr.contains("hint: known tables: "),
        "{stderr}"
    );
}

/// Bytes of disk the files under `dir` take.
/// The rows of `table`'s bronze, after checking that each is at an offset of its own (no
/// message stored twice).
fn bronze_rows_once(lake: &std::path::Path, table: &str) -> u64 {
    let rows = count(lake, Layer::Bronze, table);
    let places = "SELECT count(*) AS n FROM (SELECT DISTINCT _partition, _offset FROM t)";
    let distinct = query(lake, Layer::Bronze, table, places);
    assert!(
        distinct.contains(&format!("| {rows} ")),
        "{table}: {rows} rows\n{distinct}"
    );
    rows
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => disk_bytes(&e.path()),
            false => e.metadata().unwrap().blocks() * 512,
        })
        .sum()
}

/// `framework vacuum` gives the embedded log's disk space back for what bronze stored, and
/// only that: the messages produced but not consumed stay, and the topics keep their offsets,
/// so the next run takes them once and ends with the same bronze and silver as a lake never
/// vacuumed. A vacuum killed between recording a partition's new start and punching its holes
/// loses nothing either.
#[test]
fn vacuum_gives_back_the_logs_space_for_what_bronze_stored_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (vacuumed, kept) = (dir.path().join("vacuumed"), dir.path().join("kept"));
    for lake in [&vacuumed, &kept] {
        // Two deliveries stored, two more on the topics only (each partition's last block
        // stays in the log whatever bronze stored).
        let produced = ["--resend", "--until", "produce"];
        let kept = ["--keep-log"];
        for extra in [&kept[..], &["--resend", "--keep-log"], &produced, &produced] {
            let mut run = framework(lake);
            run.args(["run", "--all", "--data"])
                .arg(sample())
                .args(extra);
            ok(run);
        }
    }
    let before = disk_bytes(&vacuumed.join("_bus"));
    let mut killed = framework(&vacuumed);
    killed
        .arg("vacuum")
        .env("FRAMEWORK_CRASH_AT", "log-release-before-punch");
    assert!(
        !output(killed).status.success(),
        "the crash point was not reached"
    );
    let mut vacuum = framework(&vacuumed);
    vacuum.arg("vacuum");
    let out = String::from_utf8(ok(vacuum).stdout).unwrap();
    assert!(
        out.contains("embedded log: ") && out.contains("  raw_orders: "),
        "{out}"
    );
    let after = disk_bytes(&vacuumed.join("_bus"));
    // Two deliveries of four given back.
    assert!(after * 10 < before * 6, "{before} -> {after} bytes");

    for lake in [&vacuumed, &kept] {
        let mut rest = framework(lake);
        rest.args(["run", "--all", "--no-produce"]);
        ok(rest);
    }
    let project = project();
    for table in project.names() {
        let source = sample().join(&project.table(table).unwrap().config.source.path);
        let rows = bronze_rows_once(&vacuumed, table);
        assert_eq!(rows, bronze_rows_once(&kept, table), "bronze {table}");
        if source.extension().is_some_and(|e| e == "csv") {
            // Each delivery's every row once.
            let records = csv::Reader::from_path(&source).unwrap().records().count() as u64;
            assert_eq!(rows, 4 * records, "bronze {table}");
        }
        assert_eq!(
            silver_content(&vacuumed, table),
            silver_content(&kept, table),
            "silver {table}"
        );
    }
}

/// Vacuums one after the other while three deliveries are produced and stored: what the log
/// gives back never includes a message a run still needs (the producer appends, bronze follows
/// it), so bronze and silver end as on a lake never vacuumed.
#[test]
fn vacuums_racing_deliveries_release_only_what_bronze_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (vacuumed, kept) = (dir.path().join("vacuumed"), dir.path().join("kept"));
    // A quarter of Kaggle's size: geolocation's 250 000 rows are three appends of the
    // producer, so a partition gets several blocks per delivery.
    let data = generate_data(&vacuumed, dir.path(), "0.25");
    let deliver = |lake: &std::path::Path, again: bool| {
        let mut run = framework(lake);
        run.args(["run", "--all", "--data"]).arg(&data);
        if again {
            run.arg("--resend");
        }
        ok(run);
    };
    for lake in [&vacuumed, &kept] {
        deliver(lake, false);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Set however the deliveries end (a failed one panics): the vacuums stop, the scope ends.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let released = std::thread::scope(|scope| {
        let vacuums = scope.spawn(|| {
            let mut released = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut vacuum = framework(&vacuumed);
                vacuum.arg("vacuum");
                let out = String::from_utf8(ok(vacuum).stdout).unwrap();
                released += usize::from(out.contains("embedded log: "));
            }
            released
        });
        let stopping = StopOnDrop(&stop);
        for _ in 0..3 {
            deliver(&vacuumed, true);
        }
        drop(stopping);
        vacuums.join().unwrap()
    });
    assert!(released >= 2, "{released} vacuums released anything");
    for _ in 0..3 {
        deliver(&kept, true);
    }
    let project = project();
    for table in project.names() {
        assert_eq!(
            bronze_rows_once(&vacuumed, table),
            bronze_rows_once(&kept, table),
            "bronze {table}"
        );
        assert_eq!(
            silver_content(&vacuumed, table),
            silver_content(&kept, table),
            "silver {table}"
        );
    }
}

/// A bronze reader that read the committed offsets, then found its messages released from the
/// log (another run stored them meanwhile and gave them back at its end), reads the committed
/// offsets again and goes on from there: it succeeds, and bronze holds each message once.
#[test]
fn a_bronze_reader_whose_messages_were_stored_and_released_meanwhile_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // Two deliveries of orders on the topic: two blocks per partition, and a release always
    // keeps a partition's last one.
    for extra in [
        &["--until", "produce"][..],
        &["--until", "produce", "--resend"],
    ] {
        let mut run = framework(&lake);
        run.args(["run", "--table", "orders", "--data"])
            .arg(sample())
            .args(extra);
        ok(run);
    }
    let stored = [
        "run",
        "--table",
        "orders",
        "--no-produce",
        "--until",
        "bronze",
    ];
    let stale_log = dir.path().join("stale.log");
    let mut stale = framework(&lake);
    stale
        .args(stored)
        .env("FRAMEWORK_PAUSE_AT", "bronze-after-offsets=4000")
        .env("FRAMEWORK_LOG", "framework=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stale_log).unwrap());
    let mut stale = stale.spawn().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&stale_log)
        .unwrap()
        .contains("pause point bronze-after-offsets")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pause point was not reached"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Meanwhile another run stores both deliveries and, at its end, gives the first back.
    let mut other = framework(&lake);
    other.args(stored);
    let out = String::from_utf8(ok(other).stdout).unwrap();
    assert!(out.contains("embedded log: "), "nothing released: {out}");

    let status = wait_within(&mut stale, TIMEOUT).expect("the stale reader hangs");
    let log = std::fs::read_to_string(&stale_log).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("released after another reader stored them"),
        "{log}"
    );
    let source = sample().join("olist_orders_dataset.csv");
    let records = csv::Reader::from_path(&source).unwrap().records().count() as u64;
    assert_eq!(bronze_rows_once(&lake, "orders"), 2 * records);
}
