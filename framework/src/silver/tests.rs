use std::path::PathBuf;

use super::sql::*;
use crate::idcard::compile;

#[test]
fn rules_are_named_and_nulls_pass_all_but_not_null() {
    let text = "\
table: t
source: { format: csv, path: t.csv }
topic: { name: raw_t }
schema:
  - { name: id, type: string, nullable: false }
  - { name: zip, type: string, pad_left: 5 }
  - { name: amount, type: double }
key: [id]
mode: DIFF
expectations:
  - { column: amount, between: { min: 0, max: 10 }, action: drop }
  - { name: zip_shape, column: zip, matches: '^[0-9]{5}$', action: quarantine }
  - { column: zip, not_null: true, action: warn }
";
    let table = compile(&[(PathBuf::from("t.yaml"), text.to_owned())])
        .unwrap()
        .tables
        .remove(0);
    let rules = row_rules(&table);
    let names: Vec<&str> = rules.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["key_not_null", "amount_between", "zip_shape"]);
    assert_eq!(
        rules[1].1,
        "(\"amount\" IS NULL OR (CAST(\"amount\" AS DOUBLE) >= 0.0 AND CAST(\"amount\" AS DOUBLE) <= 10.0))"
    );
    assert!(normalised(&table, "zip").contains("lpad(\"zip\", 5, '0')"));
    assert_eq!(literal("it's"), "'it''s'");
}
