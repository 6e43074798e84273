use std::path::PathBuf;

use super::*;

const GOOD: &str = "\
table: things
source:
  format: csv
  path: things.csv
topic:
  name: raw_things
schema:
  - { name: id, type: string, nullable: false }
  - { name: amount, type: \"decimal(10,2)\" }
key: [id]
mode: DIFF
";

fn check(text: &str) -> String {
    match compile(&[(PathBuf::from("idcards/things.yaml"), text.to_owned())]) {
        Ok(_) => "ok".into(),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

#[test]
fn the_shipped_schema_matches_the_rust_types() {
    assert_eq!(
        compile::SCHEMA_JSON,
        generate_schema(),
        "idcards/idcard.schema.json is stale: run `framework generate-schema`"
    );
}

#[test]
fn the_repo_idcards_are_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../idcards");
    let project = load_dir(&dir).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(project.tables.len(), 9);
    let order = project.names();
    let at = |n: &str| order.iter().position(|t| *t == n).unwrap();
    assert!(at("category_translation") < at("products"));
    assert!(at("products") < at("order_items") && at("sellers") < at("order_items"));
    assert!(at("customers") < at("orders"));
}

#[test]
fn a_good_idcard_compiles() {
    assert_eq!(check(GOOD), "ok");
}

#[test]
fn unknown_field_names_line_and_column() {
    let text = GOOD.replace("mode: DIFF", "mode: DIFF\ncolour: blue");
    insta::assert_snapshot!(check(&text));
}

#[test]
fn unknown_nested_field() {
    let text = GOOD.replace("name: raw_things", "name: raw_things\n  partitons: 3");
    insta::assert_snapshot!(check(&text));
}

#[test]
fn wrong_mode() {
    insta::assert_snapshot!(check(&GOOD.replace("mode: DIFF", "mode: MERGE")));
}

#[test]
fn key_column_not_in_schema() {
    insta::assert_snapshot!(check(&GOOD.replace("key: [id]", "key: [id, missing]")));
}

#[test]
fn enrichment_of_an_unknown_table() {
    let text =
        format!("{GOOD}enrich:\n  - from: nowhere\n    on: {{ id: id }}\n    columns: [x]\n");
    insta::assert_snapshot!(check(&text));
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(check(&GOOD.replace("key: [id]", "key: [id")));
}

#[test]
fn unknown_type() {
    insta::assert_snapshot!(check(&GOOD.replace("\"decimal(10,2)\"", "money")));
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = GOOD
        .replace("key: [id]", "key: [nope]")
        .replace("\"decimal(10,2)\"", "money");
    let out = check(&text);
    assert_eq!(out.matches("error: ").count(), 2, "{out}");
}

#[test]
fn dependency_cycle() {
    let a = GOOD
        .replace("table: things", "table: a")
        .replace("raw_things", "raw_a")
        + "enrich:\n  - { from: b, on: { id: id }, columns: [{ amount: b_amount }] }\n";
    let b = GOOD
        .replace("table: things", "table: b")
        .replace("raw_things", "raw_b")
        + "enrich:\n  - { from: a, on: { id: id }, columns: [{ amount: a_amount }] }\n";
    let out = compile(&[
        (PathBuf::from("idcards/a.yaml"), a),
        (PathBuf::from("idcards/b.yaml"), b),
    ])
    .map(|_| String::from("ok"))
    .unwrap_or_else(|d| d.to_string());
    insta::assert_snapshot!(out);
}

#[test]
fn composite_key_and_type_parsing() {
    assert_eq!(
        ColumnType::parse("decimal(18,2)"),
        Some(ColumnType::Decimal {
            precision: 18,
            scale: 2
        })
    );
    assert_eq!(ColumnType::parse("decimal(2,3)"), None);
    assert_eq!(ColumnType::parse("varchar"), None);
}

#[test]
fn json_sources_are_refused_until_they_are_read() {
    let out = check(&GOOD.replace("format: csv", "format: json"));
    assert!(
        out.contains("things.yaml:3:3: source.format: JSON sources are not supported yet"),
        "{out}"
    );
}
