//! Concurrent runs on one lake: several `framework` processes at once end with the tables of a
//! single run, and two producers on one embedded topic never interleave their messages.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use framework::bus::EmbeddedLog;
use framework::lake::{Lake, Layer};

use crate::common::*;

/// Puts every sample table on its topic (`produce`, which also simulates late and duplicate
/// messages), leaving bronze and everything after empty.
fn topics_only(lake: &Path) {
    for table in project().names() {
        let mut produce = framework(lake);
        produce
            .args(["produce", "--no-delay", "--table", table, "--data"])
            .arg(sample());
        ok(produce);
    }
}

/// Bronze (without the ingestion time), silver and gold of a lake, as sorted rows per table.
fn tables(lake: &Path) -> BTreeMap<String, Vec<String>> {
    let project = project();
    let mut out = BTreeMap::new();
    for table in project.names() {
        out.insert(
            format!("bronze/{table}"),
            batch_rows(&batches(
                lake,
                Layer::Bronze,
                table,
                "SELECT * EXCLUDE (_bronze_ingested_at) FROM t",
            )),
        );
        out.insert(format!("silver/{table}"), rows(lake, Layer::Silver, table));
    }
    out.insert(
        "silver/customers_unique".into(),
        rows(lake, Layer::Silver, "customers_unique"),
    );
    for model in GOLD_MODELS {
        out.insert(format!("gold/{model}"), rows(lake, Layer::Gold, model));
    }
    out
}

#[test]
fn three_runs_racing_on_one_lake_end_with_the_tables_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let topics = dir.path().join("topics");
    topics_only(&topics);
    let one = dir.path().join("one");
    copy_dir(&topics, &one);
    let mut single = framework(&one);
    single.args(["run", "--all", "--no-produce"]);
    ok(single);
    let want = tables(&one);

    let raced = dir.path().join("raced");
    copy_dir(&topics, &raced);
    let spawn = |args: &[&str]| {
        let mut cmd = framework(&raced);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let mut children = [
        spawn(&["run", "--all", "--no-produce"]),
        spawn(&["run", "--all", "--no-produce"]),
        // Other tables at the same time. Silver only: a gold build over half-loaded silver is
        // right for that moment, but gold_daily_sales then merges only its latest days. And
        // tables that enrich from none: enrichment is computed when a row is applied, so a
        // table run before its dimensions keeps empty enrichment columns (a known limit).
        spawn(&[
            "run",
            "--table",
            "customers",
            "--table",
            "geolocation",
            "--table",
            "sellers",
            "--no-produce",
            "--until",
            "silver",
        ]),
    ];
    for (i, child) in children.iter_mut().enumerate() {
        let status = wait_within(child, TIMEOUT).expect("a racing run hangs");
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "racing run {i} failed:\n{err}");
    }
    let got = tables(&raced);
    for (table, rows) in &want {
        assert_eq!(
            got[table].len(),
            rows.len(),
            "{table}: rows after the race vs one run"
        );
        assert!(
            got[table] == *rows,
            "{table}: content differs after the race"
        );
    }
}

#[test]
fn two_producers_on_one_embedded_topic_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = generate_data(&lake, dir.path(), "0.25");
    let produce = || {
        let mut cmd = framework(&lake);
        cmd.args(["produce", "--table", "geolocation", "--no-delay", "--data"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let mut producers = [produce(), produce()];
    for child in &mut producers {
        let status = wait_within(child, TIMEOUT).expect("a producer hangs");
        assert!(status.success());
    }
    // Each partition holds one producer's messages, then the other's: the source line goes
    // down exactly once (where the second begins); with interleaved batches it would go down
    // at every switch.
    let log = EmbeddedLog::new(Lake::new(&lake).bus_dir().unwrap());
    let mut total = 0;
    for partition in 0..3 {
        let end = log.end_offset("raw_geolocation", partition).unwrap();
        let mut lines = Vec::new();
        let mut offset = 0;
        while offset < end {
            let batch = log
                .read("raw_geolocation", partition, offset, 50_000)
                .unwrap();
            offset += batch.len() as u64;
            for message in batch {
                let value: serde_json::Value = serde_json::from_slice(&message.value).unwrap();
                let line = &value["_source_line"];
                let line = line
                    .as_u64()
                    .or_else(|| line.as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or_else(|| panic!("no source line in {value}"));
                lines.push(line);
            }
        }
        let descents = lines.windows(2).filter(|w| w[1] < w[0]).count();
        assert_eq!(descents, 1, "partition {partition}: producers interleaved");
        total += lines.len();
    }
    assert!(total > 2 * 200_000, "{total} messages");
}

/// The same race through the run that `framework run` is documented to be safe for: the
/// embedded log written by a producer while bronze reads it.
#[test]
fn a_run_racing_a_producer_on_the_same_table_stores_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut produce = framework(&lake);
    produce
        .args(["produce", "--no-delay", "--table", "orders", "--data"])
        .arg(sample());
    let mut run = framework(&lake);
    run.args(["run", "--table", "orders", "--until", "silver", "--data"])
        .arg(sample());
    let mut a = produce.stdout(Stdio::null()).spawn().unwrap();
    let mut b = run.stdout(Stdio::null()).spawn().unwrap();
    assert!(wait_within(&mut a, TIMEOUT).unwrap().success());
    assert!(wait_within(&mut b, TIMEOUT).unwrap().success());
    let mut finish = framework(&lake);
    finish.args([
        "run",
        "--table",
        "orders",
        "--no-produce",
        "--until",
        "silver",
    ]);
    ok(finish);
    let messages = topic_messages(&lake, "raw_orders", 3);
    assert_eq!(count(&lake, Layer::Bronze, "orders"), messages);
    let dupes = query(
        &lake,
        Layer::Bronze,
        "orders",
        "SELECT count(*) - count(DISTINCT (_partition, _offset)) AS dupes FROM t",
    );
    assert!(dupes.contains("| 0 "), "{dupes}");
    assert_eq!(
        count(&lake, Layer::Silver, "orders"),
        distinct_keys_from_csv(&sample(), &project(), "orders")
    );
}

/// Two runs sending the same files at once: each file reaches its topic once, because a run
/// holds a table's delivery lease from its check until its record is committed. The first run
/// pauses before its record; the second starts then, waits for the lease, finds the record and
/// sends nothing.
#[test]
fn two_runs_sending_the_same_files_at_once_send_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--until",
        "produce",
        "--table",
        "sellers",
        "--table",
        "customers",
    ];
    let single = dir.path().join("single");
    let mut run = framework(&single);
    run.args(args).arg("--data").arg(sample());
    ok(run);

    let raced = dir.path().join("raced");
    let mut first = framework(&raced);
    first
        .args(args)
        .arg("--data")
        .arg(sample())
        .env("FRAMEWORK_PAUSE_AT", "deliveries-before-record=1500")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut first = first.spawn().unwrap();
    // The second starts once the first has sent a file and sleeps before recording it. The
    // first's stderr is read to its end on a thread of its own, so that waiting for the line
    // has a limit.
    let stderr = first.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = seen
            .recv_timeout(left)
            .expect("the first run ended or hung before its pause");
        if line.contains("pause point deliveries-before-record") {
            break;
        }
    }
    let mut second = framework(&raced);
    second.args(args).arg("--data").arg(sample());
    let second = ok(second);
    let status = wait_within(&mut first, TIMEOUT).expect("the first run hangs");
    assert!(status.success(), "the first run failed");
    let said = String::from_utf8_lossy(&second.stdout);
    let project = project();
    for table in ["sellers", "customers"] {
        let t = project.table(table).unwrap();
        let partitions = t.config.topic.partitions;
        assert_eq!(
            topic_messages(&raced, t.topic(), partitions),
            topic_messages(&single, t.topic(), partitions),
            "{table}: messages on the topic after two runs vs one"
        );
        assert!(
            said.contains(&format!(
                "produce {table}: {} was already ingested",
                t.config.source.path
            )),
            "{table}: the second run did not find the first's record:\n{said}"
        );
    }
}

/// The `id|value` rows `sql` selects from silver `table`, each split at its first `|`.
fn pairs_listed(lake: &Path, table: &str, sql: &str) -> Vec<(String, String)> {
    batch_rows(&batches(lake, Layer::Silver, table, sql))
        .into_iter()
        .filter_map(|row| {
            let (id, value) = row.split_once('|')?;
            Some((id.to_owned(), value.to_owned()))
        })
        .collect()
}

/// [`pairs_listed`] by id.
fn pairs(lake: &Path, table: &str, sql: &str) -> BTreeMap<String, String> {
    pairs_listed(lake, table, sql).into_iter().collect()
}

/// The rows whose id `want` holds with another value.
fn disagreeing<'a>(
    want: &BTreeMap<String, String>,
    rows: &'a [(String, String)],
) -> Vec<&'a (String, String)> {
    rows.iter()
        .filter(|(id, got)| want.get(id).is_some_and(|value| value != got))
        .collect()
}

/// Silver refines two tables at once, but a table still waits for the silver of the tables it
/// enriches from: products' silver is held for 2 s before its commit while order_items' bronze
/// comes in, and every item whose product has a category must still carry it.
#[test]
fn silver_of_a_table_waits_for_the_dimensions_it_enriches_from() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--until", "silver", "--data"])
        .arg(sample())
        .args(["--table", "category_translation", "--table", "products"])
        .args(["--table", "order_items"])
        .env("FRAMEWORK_PAUSE_AT", "silver-before-merge:products=2000");
    let out = ok(run);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pause point silver-before-merge:products"),
        "the pause was not taken"
    );
    let categories = pairs(
        &lake,
        "products",
        "SELECT product_id || '|' || product_category_name FROM t WHERE product_category_name IS NOT NULL",
    );
    assert!(
        categories.len() > 100,
        "products: {} categories",
        categories.len()
    );
    let items = pairs_listed(
        &lake,
        "order_items",
        "SELECT product_id || '|' || coalesce(product_category_name, '<none>') FROM t",
    );
    let wrong = disagreeing(&categories, &items);
    assert!(
        wrong.is_empty(),
        "{} of {} items lack their product's category, e.g. {:?}",
        wrong.len(),
        items.len(),
        &wrong[..wrong.len().min(3)]
    );
}

/// The `commitInfo` timestamp (ms) of the first commit of silver table `table`.
fn first_commit_ms(lake: &Path, table: &str) -> i64 {
    let first = delta_commits(&lake.join("silver").join(table))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("silver {table} has no commit"));
    let text = std::fs::read_to_string(&first).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|action| action["commitInfo"]["timestamp"].as_i64())
        .unwrap_or_else(|| panic!("{} has no commitInfo timestamp", first.display()))
}

/// A table waits for the silver of the tables it enriches from, not for their `latest_by`
/// tables, which enrichment does not read: with customers' rebuild of `customers_unique` held
/// for 3 s, orders (enriched from customers) is committed before it, and every order still
/// carries its customer's person id.
#[test]
fn an_enriched_table_does_not_wait_for_the_latest_by_tables_of_its_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--until", "silver", "--data"])
        .arg(sample())
        .args(["--table", "customers", "--table", "orders"])
        .env(
            "FRAMEWORK_PAUSE_AT",
            "silver-before-latest-by:customers=3000",
        );
    let out = ok(run);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pause point silver-before-latest-by"),
        "the pause was not taken"
    );
    let orders = first_commit_ms(&lake, "orders");
    let people = first_commit_ms(&lake, "customers_unique");
    assert!(
        orders < people,
        "orders committed at {orders} ms, after customers_unique at {people} ms"
    );
    let persons = pairs(
        &lake,
        "customers",
        "SELECT customer_id || '|' || customer_unique_id FROM t",
    );
    let orders = pairs_listed(
        &lake,
        "orders",
        "SELECT customer_id || '|' || coalesce(customer_unique_id, '<none>') FROM t",
    );
    assert!(orders.len() > 100, "{} orders", orders.len());
    let wrong = disagreeing(&persons, &orders);
    assert!(
        wrong.is_empty(),
        "{} of {} orders lack their customer's person id, e.g. {:?}",
        wrong.len(),
        orders.len(),
        &wrong[..wrong.len().min(3)]
    );
}
