//! Quality suites end to end: every expectation kind fails on purpose and is recorded; warn
//! records, fail stops; a suite never changes a table (the idcard decides what happens to rows).

use std::path::{Path, PathBuf};

use framework::lake::Layer;

use crate::common::*;

/// A lake with the whole sample loaded (bronze, silver, gold).
fn loaded_lake(dir: &Path) -> PathBuf {
    let lake = dir.join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    let out = ok(run);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" 0 failed"),
        "the repo suites pass on the sample:\n{stdout}"
    );
    lake
}

/// Writes one suite file into a fresh folder; returns the folder.
fn suite(dir: &Path, name: &str, text: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("suite.yaml"), text).unwrap();
    folder
}

/// `framework test` with these suites (and the repo's models).
fn test_cmd(lake: &Path, expectations: &Path) -> std::process::Command {
    let mut cmd = framework(lake);
    cmd.arg("--expectations").arg(expectations).arg("test");
    cmd
}

/// `check -> (passed, failing_rows, action)` of the latest results of a suite.
fn results(lake: &Path, suite: &str) -> Vec<(String, bool, u64, String)> {
    rows(lake, Layer::Quality, "results")
        .iter()
        .map(|r| r.split(" | ").map(str::to_owned).collect::<Vec<_>>())
        .filter(|c| c[2] == suite)
        .map(|c| {
            (
                c[3].clone(),
                c[9] == "true",
                c[11].parse().unwrap(),
                c[8].clone(),
            )
        })
        .collect()
}

#[test]
fn every_expectation_kind_fails_on_purpose_and_warn_only_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let expectations = suite(
        dir.path(),
        "kinds",
        r#"suite: kinds
layer: silver
checks:
  - { name: columns, expect: expect_table_columns_to_match_set, table: orders, column_set: [order_id, no_such_column] }
  - { name: not_null, expect: expect_column_values_to_not_be_null, table: orders, column: order_delivered_customer_date }
  - { name: unique, expect: expect_column_values_to_be_unique, table: payments, column: order_id }
  - { name: compound_unique, expect: expect_compound_columns_to_be_unique, table: order_items, column_list: [order_id] }
  - { name: between, expect: expect_column_values_to_be_between, table: order_items, column: price, min_value: 0, max_value: 100 }
  - { name: in_set, expect: expect_column_values_to_be_in_set, table: orders, column: order_status, value_set: [delivered] }
  - { name: regex, expect: expect_column_values_to_match_regex, table: customers, column: customer_state, regex: '^S' }
  - { name: row_count, expect: expect_table_row_count_to_be_between, table: orders, max_value: 10 }
  - { name: fresh, expect: expect_table_to_be_fresh, table: orders, max_age_hours: 0.0000001 }
  - name: query
    expect: expect_query_to_return_no_rows
    query: "SELECT order_id FROM silver.orders WHERE order_status = 'canceled'"
"#,
    );
    // Model tests that fail, as warnings.
    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    std::fs::write(
        models.join("gold/failing.yml"),
        r#"models:
  - name: gold_seller_performance
    columns:
      - name: avg_review_score
        tests: [{ not_null: { severity: warn } }]
      - name: seller_city
        tests: [{ relationships: { to: "source('silver', 'customers')", field: customer_city, severity: warn } }]
  - name: gold_customer_rfm
    columns:
      - name: rfm_segment
        tests: [{ unique: { severity: warn } }]
  - name: gold_daily_sales
    columns:
      - name: total_orders
        tests: [{ accepted_values: { values: ["1"], severity: warn } }]
"#,
    )
    .unwrap();
    let orders_before = count(&lake, Layer::Silver, "orders");
    let mut test = test_cmd(&lake, &expectations);
    test.arg("--models").arg(&models);
    let out = ok(test);
    let stdout = String::from_utf8_lossy(&out.stdout);

    let got = results(&lake, "kinds");
    let failing = |name: &str| {
        let r = got
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} not recorded: {got:?}"));
        assert!(!r.1, "{name} should fail: {r:?}");
        assert_eq!(r.3, "warn");
        r.2
    };
    assert_eq!(failing("columns"), 1);
    let undelivered = csv_count(
        "olist_orders_dataset.csv",
        "order_delivered_customer_date",
        str::is_empty,
    );
    assert_eq!(failing("not_null"), undelivered);
    // Silver holds every sample row of both tables: the rows sharing their order_id.
    let repeated = csv_repeated("olist_order_payments_dataset.csv", "order_id");
    assert!(repeated > 0);
    assert_eq!(failing("unique"), repeated);
    assert_eq!(
        failing("compound_unique"),
        csv_repeated("olist_order_items_dataset.csv", "order_id")
    );
    let pricey = csv_count("olist_order_items_dataset.csv", "price", |p| {
        p.parse::<f64>().unwrap() > 100.0
    });
    assert_eq!(failing("between"), pricey);
    let other = csv_count("olist_orders_dataset.csv", "order_status", |s| {
        s != "delivered"
    });
    assert_eq!(failing("in_set"), other);
    let not_s = csv_count("olist_customers_dataset.csv", "customer_state", |s| {
        !s.starts_with('S')
    });
    assert_eq!(failing("regex"), not_s);
    assert_eq!(failing("row_count"), 1);
    assert_eq!(failing("fresh"), 1);
    let canceled = csv_count("olist_orders_dataset.csv", "order_status", |s| {
        s == "canceled"
    });
    assert_eq!(failing("query"), canceled);

    let model_tests = results(&lake, "model_tests");
    for name in [
        "gold_seller_performance.avg_review_score:not_null",
        "gold_seller_performance.seller_city:relationships",
        "gold_customer_rfm.rfm_segment:unique",
        "gold_daily_sales.total_orders:accepted_values",
    ] {
        let r = model_tests
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name}: {model_tests:?}"));
        assert!(!r.1 && r.2 > 0, "{name} should fail: {r:?}");
    }
    // warn changes nothing and the summary says so.
    assert_eq!(count(&lake, Layer::Silver, "orders"), orders_before);
    assert!(stdout.contains("warned, 0 failed"), "{stdout}");
}

#[test]
fn a_suite_that_would_drop_or_quarantine_rows_is_refused_with_a_hint_naming_the_idcard() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    for (action, table, hint) in [
        ("quarantine", "orders", "idcard `orders`"),
        ("drop", "order_items", "idcard `order_items`"),
    ] {
        let expectations = suite(
            dir.path(),
            action,
            &format!(
                "suite: s\nlayer: silver\nchecks:\n  - {{ expect: expect_column_values_to_not_be_null, table: {table}, column: order_id, action: {action} }}\n"
            ),
        );
        let mut validate = framework(&lake);
        validate
            .arg("--expectations")
            .arg(&expectations)
            .arg("validate");
        let out = output(validate);
        assert!(
            !out.status.success(),
            "a suite with action {action} passed validate"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("suite.yaml:4")
                && err.contains(&format!("action `{action}`"))
                && err.contains(hint),
            "{err}"
        );
    }
}

#[test]
fn an_idcard_drop_leaves_exactly_the_failing_rows_out_of_silver() {
    let dir = tempfile::tempdir().unwrap();
    let idcards = idcards_with(
        dir.path(),
        "order_items.yaml",
        "expectations:\n",
        "expectations:\n  - { name: cheap, column: price, between: { max: 100 }, action: drop }\n",
    );
    let lake = dir.path().join("lake");
    let run = || {
        let mut run = framework(&lake);
        run.arg("--idcards")
            .arg(&idcards)
            .args([
                "run",
                "--table",
                "order_items",
                "--until",
                "silver",
                "--resend",
                "--data",
            ])
            .arg(sample());
        ok(run)
    };
    run();
    // Items are unique by key in the sample, so silver = the CSV rows priced at most 100.
    let cheap = csv_count("olist_order_items_dataset.csv", "price", |p| {
        p.parse::<f64>().unwrap() <= 100.0
    });
    assert_eq!(count(&lake, Layer::Silver, "order_items"), cheap);
    let left = query(
        &lake,
        Layer::Silver,
        "order_items",
        "SELECT count(*) AS n FROM t WHERE price > 100",
    );
    assert!(left.contains("| 0 "), "{left}");
    assert_eq!(
        count(&lake, Layer::Quarantine, "order_items"),
        0,
        "drop is not quarantine"
    );
    // Again (the same file delivered a second time): still exactly those rows.
    run();
    assert_eq!(count(&lake, Layer::Silver, "order_items"), cheap);
}

#[test]
fn fail_stops_with_a_clear_message_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let expectations = suite(
        dir.path(),
        "fail",
        "suite: f\nlayer: gold\nchecks:\n  - { name: few_days, expect: expect_table_row_count_to_be_between, table: gold_daily_sales, max_value: 10, action: fail }\n",
    );
    let out = output(test_cmd(&lake, &expectations));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("f / few_days") && err.contains("action `fail`"),
        "{err}"
    );
    assert_eq!(results(&lake, "f").len(), 1, "the failure is recorded");

    // In a run, a failing silver check stops before gold is built.
    let silver_fail = suite(
        dir.path(),
        "silver_fail",
        "suite: sf\nlayer: silver\nchecks:\n  - { name: all_delivered, expect: expect_column_values_to_be_in_set, table: orders, column: order_status, value_set: [delivered], action: fail }\n",
    );
    let fresh = dir.path().join("fresh");
    let mut run = framework(&fresh);
    run.args(["run", "--all", "--data"])
        .arg(sample())
        .arg("--expectations")
        .arg(&silver_fail);
    let out = output(run);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run stopped") && err.contains("all_delivered"),
        "{err}"
    );
    assert!(
        !fresh.join("gold/gold_daily_sales/_delta_log").exists(),
        "gold was built after a failed check"
    );
    assert!(count(&fresh, Layer::Silver, "orders") > 0);

    // A failing check on a table no model reads fails the run too, but gold, which starts once
    // its own tables are in and their checks passed, is built beside that table's silver.
    let unread_fail = suite(
        dir.path(),
        "unread_fail",
        "suite: uf\nlayer: silver\nchecks:\n  - { name: only_sao_paulo, expect: expect_column_values_to_be_in_set, table: geolocation, column: geolocation_state, value_set: [SP], action: fail }\n",
    );
    // A gold check that also reads a table refined beside gold runs once that table is in:
    // it sees this delivery's payments (on this fresh lake, before they are in there are none).
    std::fs::write(
        unread_fail.join("gold.yaml"),
        "suite: gp\nlayer: gold\nchecks:\n  - name: payments_beside_gold\n    expect: expect_query_to_return_no_rows\n    action: warn\n    query: SELECT 1 FROM (SELECT count(*) AS n FROM silver.payments) p CROSS JOIN (SELECT count(*) AS d FROM gold.gold_daily_sales) g WHERE p.n = 0 OR g.d = 0\n",
    )
    .unwrap();
    let beside = dir.path().join("beside");
    let mut run = framework(&beside);
    run.args(["run", "--all", "--data"])
        .arg(sample())
        .arg("--expectations")
        .arg(&unread_fail);
    let out = output(run);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run stopped") && err.contains("only_sao_paulo"),
        "{err}"
    );
    for model in [
        "gold_daily_sales",
        "gold_customer_rfm",
        "gold_seller_performance",
    ] {
        assert!(
            beside.join(format!("gold/{model}/_delta_log")).exists(),
            "{model} was not built beside a check on a table it does not read"
        );
    }
    assert_eq!(results(&beside, "uf").len(), 1, "the failure is recorded");
    let late = results(&beside, "gp");
    assert_eq!(late.len(), 1, "{late:?}\n{err}");
    assert!(late[0].1, "{late:?}");
}

/// A gold model that fails while it runs fails the run, naming the model, and the bronze and
/// silver checks that ran before it are still recorded (the results are one commit at the end
/// of a run, which the build's error must not skip).
#[test]
fn a_gold_build_that_fails_still_records_the_bronze_and_silver_checks() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    // A cast that fails on every row, at run time (the plan is valid).
    std::fs::write(
        models.join("gold/gold_broken.sql"),
        "SELECT CAST(order_id AS INT) AS n FROM {{ ref('stg_orders') }}\n",
    )
    .unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"])
        .arg(sample())
        .arg("--models")
        .arg(&models);
    let out = output(run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failing model passed:\n{err}");
    assert!(err.contains("gold_broken"), "{err}");
    for suite in ["bronze", "silver"] {
        let recorded = results(&lake, suite);
        assert!(
            !recorded.is_empty(),
            "the {suite} checks of the failed run were not recorded\n{err}"
        );
        assert!(
            recorded.iter().all(|(_, passed, _, _)| *passed),
            "{suite}: {recorded:?}"
        );
    }
}
