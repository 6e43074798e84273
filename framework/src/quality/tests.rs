use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::gold::Models;
use crate::idcard::{Action, load_dir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(suite: &str) -> Result<Checks, String> {
    let project = load_dir(&repo().join("idcards")).unwrap();
    let models = Models::load(&repo().join("models"), &project, BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.yaml"), suite).unwrap();
    Checks::load(dir.path(), &project, &models).map_err(|d| {
        d.to_string()
            .replace(&dir.path().display().to_string(), "expectations")
    })
}

#[test]
fn the_repo_suites_and_model_tests_load() {
    let project = load_dir(&repo().join("idcards")).unwrap();
    let models = Models::load(&repo().join("models"), &project, BTreeMap::new()).unwrap();
    let checks = Checks::load(&repo().join("expectations"), &project, &models)
        .unwrap_or_else(|d| panic!("{d}"));
    let layers: std::collections::BTreeSet<SuiteLayer> =
        checks.checks.iter().map(|c| c.layer).collect();
    assert_eq!(layers.len(), 3, "a suite per layer");
    let tests: Vec<&Check> = checks
        .checks
        .iter()
        .filter(|c| c.suite == "model_tests")
        .collect();
    assert!(
        tests
            .iter()
            .any(|c| c.name == "gold_daily_sales.order_date:unique" && c.action == Action::Fail)
    );
    assert!(
        tests
            .iter()
            .any(|c| matches!(c.rule, Rule::InRelation { .. }))
    );
    assert!(tests.iter().any(|c| matches!(c.rule, Rule::InSet { .. })));
}

#[test]
fn suite_errors_name_file_line_and_fix() {
    let out = load(
        "suite: s\nlayer: silver\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: ordersx, column: order_id }\n  - { expect: expect_table_row_count_to_be_between, table: orders, action: drop }\n  - { expect: expect_column_values_to_be_between, table: orders }\n",
    )
    .unwrap_err();
    insta::assert_snapshot!(out);
    assert!(
        out.contains("expectations/s.yaml:4:") && out.contains("unknown silver table `ordersx`"),
        "{out}"
    );
    assert!(
        out.contains("expectations/s.yaml:5:") && out.contains("it does not change them"),
        "{out}"
    );
    assert!(
        out.contains("expectations/s.yaml:6:") && out.contains("needs `column`"),
        "{out}"
    );
}

#[test]
fn suites_never_drop_or_quarantine_and_unknown_fields_are_errors() {
    let out = load("suite: b\nlayer: bronze\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: orders, column: order_id, action: quarantine }\n").unwrap_err();
    assert!(
        out.contains("s.yaml:4:") && out.contains("action `quarantine` is not allowed here"),
        "{out}"
    );
    let out = load("suite: g\nlayer: gold\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: gold_daily_sales, column: order_date, action: drop }\n").unwrap_err();
    assert!(out.contains("filter them in its model"), "{out}");
    let out = load("suite: b\nlayer: bronze\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: orders, colum: order_id }\n").unwrap_err();
    assert!(
        out.contains("unknown field `colum`") && out.contains("s.yaml:4:"),
        "{out}"
    );
    let out = load("suite: b\nlayer: platinum\nchecks: []\n").unwrap_err();
    assert!(out.contains("platinum"), "{out}");
}

#[test]
fn a_check_names_columns_its_table_has_and_accepts_some_value() {
    // An idcard column, an enriched one (silver), a column of the engine, a latest_by table.
    let ok = load(
        "suite: s\nlayer: silver\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: order_items, column: product_category_name }\n  - { expect: expect_column_values_to_not_be_null, table: orders, column: _offset }\n  - { expect: expect_column_values_to_be_unique, table: customers_unique, column: customer_unique_id }\n",
    );
    assert!(ok.is_ok(), "{}", ok.unwrap_err());
    let out = load(
        "suite: s\nlayer: silver\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: orders, column: zzz }\n  - { expect: expect_compound_columns_to_be_unique, table: payments, column_list: [order_id, payment_seq] }\n  - { expect: expect_column_values_to_be_in_set, table: orders, column: order_status, value_set: [] }\n",
    )
    .unwrap_err();
    assert!(
        out.contains("s.yaml:4:")
            && out.contains("column: silver table `orders` has no column `zzz`")
            && out.contains("hint: its columns: order_id, customer_id,"),
        "{out}"
    );
    assert!(
        out.contains("s.yaml:5:")
            && out.contains("column_list: silver table `payments` has no column `payment_seq`"),
        "{out}"
    );
    assert!(
        out.contains("s.yaml:6:") && out.contains("value_set lists no value"),
        "{out}"
    );
    // `between` compares numbers: a text column is refused, in bronze as in silver.
    for layer in ["bronze", "silver"] {
        let out = load(&format!(
            "suite: s\nlayer: {layer}\nchecks:\n  - {{ expect: expect_column_values_to_be_between, table: orders, column: order_status, min_value: 1 }}\n"
        ))
        .unwrap_err();
        assert!(
            out.contains("s.yaml:4:")
                && out.contains(&format!(
                    "`between` needs a numeric column: `order_status` of {layer} table `orders` is not"
                ))
                && out.contains("expect_column_values_to_match_regex"),
            "{out}"
        );
    }
    // Bronze holds no enriched column.
    let out = load(
        "suite: b\nlayer: bronze\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: order_items, column: product_category_name }\n",
    )
    .unwrap_err();
    assert!(
        out.contains("bronze table `order_items` has no column `product_category_name`"),
        "{out}"
    );
}

/// A gold check's columns are checked once the models are planned (`validate`): a column its
/// model lacks, and `between` on a text column, are refused at the check's line.
#[tokio::test]
async fn a_gold_check_names_columns_its_model_has_once_planned() {
    let project = load_dir(&repo().join("idcards")).unwrap();
    let models = Models::load(&repo().join("models"), &project, BTreeMap::new()).unwrap();
    let shapes = crate::gold::check_sql(&models, &project)
        .await
        .unwrap_or_else(|d| panic!("{d}"));
    let planned = |suite: &str| load(suite).unwrap_or_else(|e| panic!("{e}"));
    let good = planned(
        "suite: g\nlayer: gold\nchecks:\n  - { expect: expect_column_values_to_be_between, table: gold_customer_rfm, column: recency_days, min_value: 0 }\n",
    );
    assert!(good.check_shapes(&shapes).is_ok());
    let bad = planned(
        "suite: g\nlayer: gold\nchecks:\n  - { expect: expect_column_values_to_not_be_null, table: gold_daily_sales, column: zzz }\n  - { expect: expect_column_values_to_be_between, table: gold_customer_rfm, column: rfm_segment, min_value: 1 }\n",
    );
    let out = bad.check_shapes(&shapes).unwrap_err().to_string();
    assert!(
        out.contains("s.yaml:4:")
            && out.contains("gold table `gold_daily_sales` has no column `zzz`")
            && out.contains("hint: its columns: order_date,"),
        "{out}"
    );
    assert!(
        out.contains("s.yaml:5:")
            && out.contains(
                "`between` needs a numeric column: `rfm_segment` of gold table `gold_customer_rfm` is not"
            ),
        "{out}"
    );
}

/// A query check is one SELECT: `COPY (SELECT 1) TO 'file'` passed `validate` and `test`
/// wrote the file; two statements, and SQL that does not parse, are refused at the check too.
#[test]
fn a_query_check_is_one_select() {
    let suite = |query: &str| {
        load(&format!(
            "suite: s\nlayer: silver\nchecks:\n  - name: q\n    expect: expect_query_to_return_no_rows\n    query: \"{query}\"\n"
        ))
    };
    assert!(suite("WITH o AS (SELECT 1 AS x) SELECT x FROM o WHERE x > 1").is_ok());
    for (query, said) in [
        (
            "COPY (SELECT 1) TO '/tmp/written.csv'",
            "the query must be a SELECT",
        ),
        ("SELECT 1; SELECT 2", "the query holds 2 statements"),
        ("SELEC 1", "the query does not parse"),
    ] {
        let out = suite(query).unwrap_err();
        assert!(
            out.contains("s.yaml:6:") && out.contains(&format!("query: {said}")),
            "{query}: {out}"
        );
    }
}
