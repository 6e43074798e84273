use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::idcard::{Project, load_dir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn project() -> Project {
    load_dir(&repo().join("idcards")).unwrap_or_else(|d| panic!("{d}"))
}

fn repo_models() -> Models {
    Models::load(&repo().join("models"), &project(), BTreeMap::new())
        .unwrap_or_else(|d| panic!("{d}"))
}

/// Loads models written to a temp dir; returns "ok" or the errors with the dir shown as `models`.
fn load(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    match Models::load(dir.path(), &project(), BTreeMap::new()) {
        Ok(_) => "ok".into(),
        Err(d) => d
            .to_string()
            .replace(&dir.path().display().to_string(), "models"),
    }
}

#[test]
fn every_repo_model_renders_as_snapshotted() {
    let models = repo_models();
    for model in &models.models {
        let sql = models
            .render(model, false)
            .unwrap_or_else(|d| panic!("{d}"));
        insta::assert_snapshot!(format!("render_{}", model.name), sql);
    }
    let daily = models.get("gold_daily_sales").unwrap();
    let incremental = models.render(daily, true).unwrap();
    assert!(
        incremental.contains("FROM gold.gold_daily_sales"),
        "{incremental}"
    );
    insta::assert_snapshot!("render_gold_daily_sales_incremental", incremental);
}

#[test]
fn repo_models_have_the_expected_shape() {
    let models = repo_models();
    let m = |name: &str| models.get(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(m("stg_orders").config.materialized, Materialized::View);
    assert_eq!(
        m("int_delivered_items").config.materialized,
        Materialized::Ephemeral
    );
    assert_eq!(
        m("gold_daily_sales").config.materialized,
        Materialized::Incremental
    );
    assert_eq!(m("gold_daily_sales").config.unique_key, vec!["order_date"]);
    assert_eq!(
        m("gold_customer_rfm").config.materialized,
        Materialized::Table
    );
    let order = models.names();
    let at = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(at("stg_orders") < at("int_delivered_items"));
    assert!(at("int_delivered_items") < at("gold_daily_sales"));
    // The ephemeral model is inlined as a CTE, the views are read by name.
    let sql = models.render(m("gold_seller_performance"), false).unwrap();
    assert!(
        sql.starts_with("WITH __cte_int_delivered_items AS ("),
        "{sql}"
    );
    assert!(sql.contains("staging.stg_reviews"), "{sql}");
}

#[test]
fn selection_follows_the_graph() {
    let models = repo_models();
    let all = select(&models, &[]).unwrap();
    assert_eq!(all.len(), models.models.len());
    let down = select(&models, &["source:reviews+".into()]).unwrap();
    assert!(down.contains("stg_reviews") && down.contains("gold_seller_performance"));
    assert!(!down.contains("gold_daily_sales"), "{down:?}");
    let up = select(&models, &["+gold_daily_sales".into()]).unwrap();
    assert!(up.contains("stg_orders") && up.contains("int_delivered_items"));
    assert!(!up.contains("gold_customer_rfm"));
    let err = select(&models, &["nope".into()]).unwrap_err().to_string();
    assert!(
        err.contains("unknown model `nope`") && err.contains("gold_daily_sales"),
        "{err}"
    );
}

#[test]
fn unknown_ref_names_file_and_line() {
    let out = load(&[("gold/a.sql", "-- a\nSELECT *\nFROM {{ ref('missing') }}\n")]);
    insta::assert_snapshot!(out);
    assert!(out.contains("models/gold/a.sql:3:"), "{out}");
}

/// Rendering is bounded: a nested loop of 10^10 steps ran until the memory ran out; it now
/// stops with an error naming the model's file.
#[test]
fn a_runaway_template_stops_with_its_file() {
    let started = std::time::Instant::now();
    let out = load(&[(
        "gold/a.sql",
        "-- {% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\nSELECT 1 AS x\n",
    )]);
    assert!(
        out.contains("models/gold/a.sql:1:") && out.contains("fuel"),
        "{out}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A model or macro that is not UTF-8 is named with its path (the error named the folder);
/// so is a suite.
#[test]
fn a_file_that_is_not_utf8_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("macros")).unwrap();
    std::fs::write(dir.path().join("macros/m.sql"), b"{# caf\xe9 #}\n").unwrap();
    let out = Models::load(dir.path(), &project(), BTreeMap::new())
        .map(|_| String::from("ok"))
        .unwrap_or_else(|d| d.to_string());
    assert!(
        out.contains("macros/m.sql: is not UTF-8 text (save it as UTF-8)"),
        "{out}"
    );
    let suites = tempfile::tempdir().unwrap();
    std::fs::write(suites.path().join("s.yaml"), b"suite: caf\xe9\n").unwrap();
    let models = Models::load(&repo().join("models"), &project(), BTreeMap::new()).unwrap();
    let out = crate::quality::Checks::load(suites.path(), &project(), &models)
        .map(|_| String::from("ok"))
        .unwrap_or_else(|d| d.to_string());
    assert!(
        out.contains("s.yaml: is not UTF-8 text (save it as UTF-8)"),
        "{out}"
    );
}

#[test]
fn cycle_names_file_and_line() {
    let out = load(&[
        ("gold/a.sql", "SELECT * FROM {{ ref('b') }}\n"),
        (
            "gold/b.sql",
            "-- b reads c\n\nSELECT * FROM {{ ref('c') }}\n",
        ),
        ("gold/c.sql", "SELECT * FROM {{ ref('a') }}\n"),
    ]);
    insta::assert_snapshot!(out);
    assert!(out.contains("models/gold/b.sql:3:"), "{out}");
    assert!(out.contains("a -> b -> c -> a"), "{out}");
}

#[test]
fn jinja_syntax_error_names_file_and_line() {
    let out = load(&[(
        "gold/a.sql",
        "SELECT 1 AS x\n{% if is_incremental() %}\nWHERE x > 0\n",
    )]);
    insta::assert_snapshot!(out);
    assert!(out.contains("models/gold/a.sql:"), "{out}");
    assert!(out.contains("template syntax error"), "{out}");
}

#[test]
fn undefined_names_and_unset_vars_are_errors_not_empty_sql() {
    let out = load(&[(
        "gold/a.sql",
        "SELECT 1 AS x\nWHERE {{ no_such_thing }} > 0\n",
    )]);
    assert!(
        out.contains("models/gold/a.sql:2:") && out.contains("undefined"),
        "{out}"
    );
    let out = load(&[("gold/a.sql", "SELECT {{ var('cutoff') }} AS x\n")]);
    assert!(out.contains("var `cutoff` is not set"), "{out}");
    let out = load(&[(
        "gold/a.sql",
        "SELECT * FROM {{ source('silver', 'nope') }}\n",
    )]);
    assert!(
        out.contains("unknown table `nope` in source()") && out.contains("orders"),
        "{out}"
    );
}

#[test]
fn an_incremental_model_needs_a_unique_key() {
    let out = load(&[(
        "gold/a.sql",
        "{{ config(materialized='incremental') }}\nSELECT 1 AS x\n",
    )]);
    assert!(out.contains("needs a unique_key"), "{out}");
    let out = load(&[(
        "gold/a.sql",
        "{{ config(materialized='tabel') }}\nSELECT 1 AS x\n",
    )]);
    assert!(out.contains("unknown materialization `tabel`"), "{out}");
}

#[test]
fn vars_and_macros_render() {
    let dir = tempfile::tempdir().unwrap();
    let write = |p: &str, t: &str| {
        let f = dir.path().join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, t).unwrap();
    };
    write(
        "macros/m.sql",
        "{% macro twice(x) %}2 * {{ x }}{% endmacro %}",
    );
    write("gold/a.sql", "SELECT {{ twice(var('n', 1)) }} AS x");
    let vars = BTreeMap::from([("n".to_owned(), serde_json::json!(21))]);
    let models = Models::load(dir.path(), &project(), vars).unwrap();
    assert_eq!(
        models.render(models.get("a").unwrap(), false).unwrap(),
        "SELECT 2 * 21 AS x"
    );
}

#[test]
fn ctes_merge_with_a_leading_with() {
    let ctes = [("__cte_e".to_owned(), "SELECT 1 AS one".to_owned())];
    assert_eq!(
        render::with_ctes("-- c\nwith a AS (SELECT 2) SELECT * FROM a, __cte_e", &ctes),
        "WITH __cte_e AS (\nSELECT 1 AS one\n),\na AS (SELECT 2) SELECT * FROM a, __cte_e"
    );
    assert_eq!(
        render::with_ctes("SELECT * FROM __cte_e", &ctes),
        "WITH __cte_e AS (\nSELECT 1 AS one\n)\nSELECT * FROM __cte_e"
    );
    // "without" is not "with".
    assert!(render::with_ctes("withx", &ctes).ends_with("\nwithx"));
}
