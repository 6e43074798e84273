//! Gold models end to end: every table equals an independent computation of GOLD_SPEC.md, and
//! incremental runs, re-runs and full rebuilds agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use framework::lake::Layer;

use crate::common::*;

/// The gold tables computed by tests/py/gold_reference.py (plain Python, no SQL) from the CSVs,
/// each row as `a | b | c` like [`rows`].
fn reference(data: &Path) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("framework/tests/py/gold_reference.py"))
        .arg("--data")
        .arg(data);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The reference rows as text, cells in `columns` order.
fn as_rows(table: &serde_json::Value, columns: &[String]) -> Vec<String> {
    let mut rows: Vec<String> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| match &row[c.as_str()] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "null".into(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    rows.sort();
    rows
}

fn assert_same_rows(table: &str, ours: &[String], theirs: &[String]) {
    let a: BTreeSet<&String> = ours.iter().collect();
    let b: BTreeSet<&String> = theirs.iter().collect();
    let only_ours: Vec<_> = a.difference(&b).take(5).collect();
    let only_theirs: Vec<_> = b.difference(&a).take(5).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty() && ours.len() == theirs.len(),
        "{table}: {} rows vs {} expected\n only in gold: {only_ours:#?}\n only in the reference: {only_theirs:#?}",
        ours.len(),
        theirs.len()
    );
}

fn gold_snapshot(lake: &Path) -> Vec<Vec<String>> {
    GOLD_MODELS
        .iter()
        .map(|t| rows(lake, Layer::Gold, t))
        .collect()
}

#[test]
fn every_gold_table_equals_an_independent_computation_of_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    assert_gold_equals_reference(&lake, &sample());
    // The ephemeral model the five read (int_delivered_items) is computed once per build and
    // held in memory for the others; the tables stay equal to the reference.
    let mut build = framework(&lake);
    build.args(["build", "--full-refresh", "--log", "framework=debug"]);
    let out = ok(build);
    let log = String::from_utf8_lossy(&out.stderr);
    let shared: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gold: shared ephemeral model computed once"))
        .collect();
    assert_eq!(shared.len(), 1, "{log}");
    assert!(
        shared[0].contains("int_delivered_items") && shared[0].contains("held=true"),
        "{log}"
    );
    assert_gold_equals_reference(&lake, &sample());
    // Built as large sources are (models `--threads` at a time, each query split over every
    // core), the tables are the same.
    let mut build = framework(&lake);
    build
        .args(["build", "--full-refresh", "--log", "framework=debug"])
        .env("FRAMEWORK_GOLD_SMALL_SOURCES_MB", "0");
    let out = ok(build);
    let log = String::from_utf8_lossy(&out.stderr);
    let cores = std::thread::available_parallelism().unwrap().get();
    let registered = log
        .lines()
        .find(|l| l.contains("gold: sources registered"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        registered.contains("large=true")
            && registered.contains(&format!("query_partitions={cores}")),
        "{registered}"
    );
    assert_gold_equals_reference(&lake, &sample());
    // A limit that is not a number stops the build, naming it.
    let mut build = framework(&lake);
    build
        .args(["build", "--full-refresh"])
        .env("FRAMEWORK_GOLD_SMALL_SOURCES_MB", "lots");
    let out = output(build);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("FRAMEWORK_GOLD_SMALL_SOURCES_MB=\"lots\" is not a whole number")
            && stderr.contains("hint:"),
        "{stderr}"
    );
    // A real category averages exactly on a half cent: rounded half away from zero.
    let products = rows(&lake, Layer::Gold, "gold_product_analytics");
    assert!(
        products
            .iter()
            .any(|r| r.starts_with("fashion_underwear_beach |") && r.contains("| 65.43 |")),
        "{products:#?}"
    );
}

/// Checks every gold table of `lake` against tests/py/gold_reference.py run on the CSVs of `data`.
pub fn assert_gold_equals_reference(lake: &Path, data: &Path) {
    let expected = reference(data);
    for table in GOLD_MODELS {
        let columns = columns(lake, Layer::Gold, table);
        let first = expected[table][0].as_object().unwrap();
        assert_eq!(
            columns.len(),
            first.len(),
            "{table}: {columns:?} vs {first:?}"
        );
        let ours = rows(lake, Layer::Gold, table);
        let theirs = as_rows(&expected[table], &columns);
        assert!(!theirs.is_empty(), "{table}: the reference is empty");
        assert_same_rows(table, &ours, &theirs);
    }
}

/// Writes the sample with only the orders bought before `cutoff` (and their items, payments and
/// reviews); the other tables whole.
fn sample_before(cutoff: &str, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let read = |file: &str| {
        let mut reader = csv::Reader::from_path(sample().join(file)).unwrap();
        let headers = reader.headers().unwrap().clone();
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        (headers, records)
    };
    let write = |file: &str, headers: &csv::StringRecord, records: &[&csv::StringRecord]| {
        let mut writer = csv::Writer::from_path(out.join(file)).unwrap();
        writer.write_record(headers).unwrap();
        for r in records {
            writer.write_record(*r).unwrap();
        }
    };
    let (headers, orders) = read("olist_orders_dataset.csv");
    let purchase = headers
        .iter()
        .position(|h| h == "order_purchase_timestamp")
        .unwrap();
    let kept: Vec<&csv::StringRecord> = orders.iter().filter(|r| &r[purchase] < cutoff).collect();
    let ids: BTreeSet<String> = kept.iter().map(|r| r[0].to_owned()).collect();
    write("olist_orders_dataset.csv", &headers, &kept);
    for file in [
        "olist_order_items_dataset.csv",
        "olist_order_payments_dataset.csv",
        "olist_order_reviews_dataset.csv",
    ] {
        let (headers, records) = read(file);
        let at = headers.iter().position(|h| h == "order_id").unwrap();
        let kept: Vec<&csv::StringRecord> =
            records.iter().filter(|r| ids.contains(&r[at])).collect();
        write(file, &headers, &kept);
    }
    for file in [
        "olist_customers_dataset.csv",
        "olist_geolocation_dataset.csv",
        "olist_products_dataset.csv",
        "olist_sellers_dataset.csv",
        "product_category_name_translation.csv",
        "customer_profiles.jsonl",
    ] {
        std::fs::copy(sample().join(file), out.join(file)).unwrap();
    }
}

fn run_report(lake: &Path, data: &Path, report: &Path) -> serde_json::Value {
    let mut run = framework(lake);
    run.args(["run", "--all", "--data"])
        .arg(data)
        .arg("--report")
        .arg(report);
    ok(run);
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

/// The report of `model` in a run's `--report` JSON.
fn model_report<'r>(report: &'r serde_json::Value, model: &str) -> &'r serde_json::Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("no report of {model}: {report}"))
}

#[test]
fn incremental_runs_reruns_and_full_rebuilds_give_the_same_gold() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let early = dir.path().join("early");
    sample_before("2018-01-01", &early);

    // First the orders of 2016-2017, then every order: daily sales are merged incrementally.
    run_report(&lake, &early, &dir.path().join("r1.json"));
    let before = rows(&lake, Layer::Gold, "gold_daily_sales");
    let report = run_report(&lake, &sample(), &dir.path().join("r2.json"));
    let daily = model_report(&report, "gold_daily_sales");
    assert_eq!(daily["incremental"], true, "{daily}");
    let computed = daily["rows_computed"].as_u64().unwrap();
    let total = daily["rows"].as_u64().unwrap();
    assert!(computed < total && total > before.len() as u64, "{daily}");
    let incremental = gold_snapshot(&lake);

    // The whole pipeline again: nothing changes.
    run_report(&lake, &sample(), &dir.path().join("r3.json"));
    assert_eq!(gold_snapshot(&lake), incremental, "a re-run changed gold");

    // A full rebuild from silver gives the same tables.
    let mut build = framework(&lake);
    build.args(["build", "--full-refresh"]);
    let out = ok(build);
    assert!(String::from_utf8_lossy(&out.stdout).contains("gold_daily_sales"));
    assert_eq!(
        gold_snapshot(&lake),
        incremental,
        "incremental differs from a full rebuild"
    );

    // And a fresh lake loaded once agrees too.
    let fresh = dir.path().join("fresh");
    let mut run = framework(&fresh);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    assert_eq!(gold_snapshot(&fresh), incremental);
}

#[test]
fn rows_an_input_updates_build_an_incremental_model_in_full_and_gold_stays_right() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    run_report(&lake, &sample(), &dir.path().join("r1.json"));
    let before = gold_snapshot(&lake);

    // Ten delivered orders of 2017 canceled: their dates lie far behind the incremental
    // lookback, so merging the recent dates alone would leave their revenue in gold.
    let changed = dir.path().join("changed");
    copy_dir(&sample(), &changed);
    let orders = changed.join("olist_orders_dataset.csv");
    let mut reader = csv::Reader::from_path(&orders).unwrap();
    let headers = reader.headers().unwrap().clone();
    let status = headers.iter().position(|h| h == "order_status").unwrap();
    let bought = headers
        .iter()
        .position(|h| h == "order_purchase_timestamp")
        .unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut writer = csv::Writer::from_path(&orders).unwrap();
    writer.write_record(&headers).unwrap();
    let mut canceled = 0;
    for record in &records {
        let mut fields: Vec<&str> = record.iter().collect();
        if canceled < 10 && fields[status] == "delivered" && fields[bought].starts_with("2017-0") {
            fields[status] = "canceled";
            canceled += 1;
        }
        writer.write_record(&fields).unwrap();
    }
    writer.flush().unwrap();
    assert_eq!(canceled, 10);

    let report = run_report(&lake, &changed, &dir.path().join("r2.json"));
    let daily = model_report(&report, "gold_daily_sales");
    assert_eq!(daily["incremental"], false, "{daily}");
    assert_eq!(daily["unchanged"], false, "{daily}");
    let now = gold_snapshot(&lake);
    assert_ne!(now, before, "the canceled orders did not reach gold");
    let fresh = dir.path().join("fresh");
    run_report(&fresh, &changed, &dir.path().join("r3.json"));
    assert_eq!(
        now,
        gold_snapshot(&fresh),
        "gold after the update differs from a fresh build"
    );
}

/// `data` with one more item of `order`: a copy of its first item as number 99.
fn with_new_item(data: &Path, order: &str) {
    let items = data.join("olist_order_items_dataset.csv");
    let mut reader = csv::Reader::from_path(&items).unwrap();
    let headers = reader.headers().unwrap().clone();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let first = records.iter().find(|r| &r[0] == order).unwrap();
    let mut writer = csv::Writer::from_path(&items).unwrap();
    writer.write_record(&headers).unwrap();
    for record in &records {
        writer.write_record(record).unwrap();
    }
    let mut added: Vec<&str> = first.iter().collect();
    added[1] = "99";
    writer.write_record(&added).unwrap();
    writer.flush().unwrap();
}

/// `gold_daily_sales`' row of `date` (`YYYY-MM-DD`).
fn daily_row(lake: &Path, date: &str) -> String {
    let sql = format!("SELECT * FROM t WHERE order_date = DATE '{date}'");
    let rows = batch_rows(&batches(lake, Layer::Gold, "gold_daily_sales", &sql));
    assert_eq!(rows.len(), 1, "{date}: {rows:?}");
    rows[0].clone()
}

#[test]
fn a_row_added_for_a_date_outside_the_incremental_window_builds_the_model_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    run_report(&lake, &sample(), &dir.path().join("r1.json"));

    // Two delivered orders with items: the latest one, whose date lies in the incremental
    // window (the last two dates), and one of 2016, far behind it.
    let mut reader = csv::Reader::from_path(sample().join("olist_orders_dataset.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (status, bought) = (at("order_status"), at("order_purchase_timestamp"));
    let items = std::fs::read_to_string(sample().join("olist_order_items_dataset.csv")).unwrap();
    let mut delivered: Vec<(String, String)> = reader
        .records()
        .map(Result::unwrap)
        .filter(|r| &r[status] == "delivered" && items.contains(&r[0]))
        .map(|r| (r[bought].to_owned(), r[0].to_owned()))
        .collect();
    delivered.sort();
    let (old_at, old) = delivered.first().unwrap().clone();
    let (recent_at, recent) = delivered.last().unwrap().clone();
    assert!(old_at.starts_with("2016"), "{old_at}");
    let (old_date, recent_date) = (&old_at[..10], &recent_at[..10]);
    let old_row = daily_row(&lake, old_date);

    // A new item of the recent order: merged in its window.
    let recent_only = dir.path().join("recent");
    copy_dir(&sample(), &recent_only);
    with_new_item(&recent_only, &recent);
    let recent_row = daily_row(&lake, recent_date);
    let report = run_report(&lake, &recent_only, &dir.path().join("r2.json"));
    let daily = model_report(&report, "gold_daily_sales");
    assert_eq!(daily["incremental"], true, "{daily}");
    assert_ne!(
        daily_row(&lake, recent_date),
        recent_row,
        "the item did not reach gold"
    );

    // A new item of the old order too (a late row): the merge of the window alone would leave
    // its date as it was, so the model is built in full.
    let late = dir.path().join("late");
    copy_dir(&recent_only, &late);
    with_new_item(&late, &old);
    let report = run_report(&lake, &late, &dir.path().join("r3.json"));
    let daily = model_report(&report, "gold_daily_sales");
    assert_eq!(daily["incremental"], false, "{daily}");
    let now = daily_row(&lake, old_date);
    let cells = |row: &str| row.split(" | ").map(str::to_owned).collect::<Vec<_>>();
    let (was, is) = (cells(&old_row), cells(&now));
    // order_date | total_orders | total_revenue | avg_order_value | total_items
    assert_eq!((&is[0], &is[1]), (&was[0], &was[1]), "{was:?} -> {is:?}");
    let items_before: u64 = was[4].parse().unwrap();
    assert_eq!(is[4], (items_before + 1).to_string(), "{was:?} -> {is:?}");
    assert_ne!(is[2], was[2], "{was:?} -> {is:?}");
    let fresh = dir.path().join("fresh");
    run_report(&fresh, &late, &dir.path().join("r4.json"));
    assert_eq!(
        gold_snapshot(&lake),
        gold_snapshot(&fresh),
        "gold after the late row differs from a fresh build"
    );
}

#[test]
fn compile_prints_the_rendered_sql_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.json");
    let mut compile = framework(&dir.path().join("lake"));
    compile
        .args(["compile", "--select", "+gold_daily_sales", "--manifest"])
        .arg(&manifest);
    let out = ok(compile);
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(
        sql.contains("-- gold_daily_sales") && sql.contains("WITH __cte_int_delivered_items AS ("),
        "{sql}"
    );
    assert!(
        !sql.contains("{{") && !sql.contains("gold_customer_rfm"),
        "{sql}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let names: Vec<&str> = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"gold_daily_sales"), "{names:?}");
    assert!(names.contains(&"stg_orders"));
}

#[test]
fn a_broken_model_is_an_error_with_file_and_line() {
    let err = validate_failing_models(&[(
        "gold/bad.sql",
        "SELECT 1 AS x\nFROM {{ ref('gold_nope') }}\n",
    )]);
    assert!(
        err.contains("gold/bad.sql:2:") && err.contains("unknown model `gold_nope`"),
        "{err}"
    );
}

#[test]
fn validate_plans_the_models_sql_and_names_an_unknown_column_with_the_file() {
    let err = validate_failing_models(&[
        (
            "gold/typo.sql",
            "SELECT order_id, order_purchase_timestmp FROM {{ source('silver', 'orders') }}\n",
        ),
        (
            "gold/reads_typo.sql",
            "SELECT count(*) AS n FROM {{ ref('typo') }}\n",
        ),
        (
            "gold/good.sql",
            "SELECT order_id, customer_unique_id, _sequence FROM {{ source('silver', 'orders') }}\n",
        ),
    ]);
    assert!(
        err.contains("gold/typo.sql:1:1: the SQL does not plan")
            && err.contains("order_purchase_timestmp")
            && err.contains("framework compile --select typo"),
        "{err}"
    );
    // One problem: the model reading the broken one is not reported again, the good one passes.
    assert!(err.contains("1 problem(s)"), "{err}");
}

/// `framework validate` on a models folder holding only `files` (path under the folder, SQL):
/// asserts it fails and returns its stderr.
fn validate_failing_models(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for (path, sql) in files {
        let path = models.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, sql).unwrap();
    }
    let mut validate = framework(&dir.path().join("lake"));
    validate.arg("--models").arg(&models).arg("validate");
    let out = output(validate);
    assert!(!out.status.success(), "validate passed on broken models");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether each model of a run's report was kept unchanged, by model name.
fn kept(report: &serde_json::Value) -> BTreeMap<String, bool> {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_owned(),
                m["unchanged"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_model_is_kept_when_nothing_it_reads_changed_and_built_when_something_did() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    run_report(&lake, &sample(), &dir.path().join("r1.json"));
    let first = gold_snapshot(&lake);

    // Every row again: silver commits only offsets, the FULL table category_translation too
    // (its snapshot equals the stored one), so every model is kept. Reviews' randomized PII
    // column gets new ciphertexts of the same plaintexts, which silver compares by plaintext:
    // reviews is unchanged, and gold_seller_performance kept.
    let mut again = framework(&lake);
    again
        .args(["run", "--all", "--resend", "--data"])
        .arg(sample())
        .arg("--report")
        .arg(dir.path().join("r2.json"));
    ok(again);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r2.json")).unwrap())
            .unwrap();
    let expected: BTreeMap<String, bool> = [
        ("gold_customer_rfm", true),
        ("gold_daily_sales", true),
        ("gold_delivery_performance", true),
        ("gold_product_analytics", true),
        ("gold_seller_performance", true),
    ]
    .into_iter()
    .map(|(m, k)| (m.to_owned(), k))
    .collect();
    assert_eq!(kept(&report), expected);
    assert_eq!(
        gold_snapshot(&lake),
        first,
        "an unchanged delivery changed gold"
    );

    // Every 1-star review becomes 5 stars: the two models reading reviews are built again, the
    // others kept; the result equals a fresh lake loaded with the changed data.
    let changed = dir.path().join("changed");
    copy_dir(&sample(), &changed);
    let reviews = changed.join("olist_order_reviews_dataset.csv");
    let mut reader = csv::Reader::from_path(&reviews).unwrap();
    let headers = reader.headers().unwrap().clone();
    let score = headers.iter().position(|h| h == "review_score").unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut writer = csv::Writer::from_path(&reviews).unwrap();
    writer.write_record(&headers).unwrap();
    let mut flipped = 0;
    for record in &records {
        let mut fields: Vec<&str> = record.iter().collect();
        if fields[score] == "1" {
            fields[score] = "5";
            flipped += 1;
        }
        writer.write_record(&fields).unwrap();
    }
    writer.flush().unwrap();
    assert!(flipped > 0);
    let report = run_report(&lake, &changed, &dir.path().join("r3.json"));
    let expected: BTreeMap<String, bool> = [
        ("gold_customer_rfm", true),
        ("gold_daily_sales", true),
        ("gold_delivery_performance", true),
        ("gold_product_analytics", false),
        ("gold_seller_performance", false),
    ]
    .into_iter()
    .map(|(m, k)| (m.to_owned(), k))
    .collect();
    assert_eq!(kept(&report), expected);
    let fresh = dir.path().join("fresh");
    run_report(&fresh, &changed, &dir.path().join("r4.json"));
    let now = gold_snapshot(&lake);
    assert_ne!(now, first, "the changed reviews did not reach gold");
    assert_eq!(
        now,
        gold_snapshot(&fresh),
        "kept and rebuilt models differ from a fresh build"
    );
}
