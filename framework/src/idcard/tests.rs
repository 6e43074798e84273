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
    assert_eq!(project.tables.len(), 10);
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

/// A table that waits on a cycle is not on it; a table enriching from itself, a renamed column
/// map of two entries and a column brought twice are refused where they stand (the self join
/// was reported as a cycle with a table that only waited on it, the two-entry map dropped a
/// column silently, the duplicate was blamed on a model).
#[test]
fn enrichment_cycles_self_joins_and_column_maps_are_named_where_they_stand() {
    let table = |name: &str, enrich: &str| {
        (
            PathBuf::from(format!("idcards/{name}.yaml")),
            GOOD.replace("table: things", &format!("table: {name}"))
                .replace("raw_things", &format!("raw_{name}"))
                + enrich,
        )
    };
    let errors = |idcards: &[(PathBuf, String)]| {
        compile(idcards)
            .map(|_| String::from("ok"))
            .unwrap_or_else(|d| d.to_string())
    };
    let join = |from: &str, columns: &str| {
        format!("enrich:\n  - {{ from: {from}, on: {{ id: id }}, columns: {columns} }}\n")
    };
    let out = errors(&[
        table("a", &join("b", "[{ amount: b_amount }]")),
        table("b", &join("a", "[{ amount: a_amount }]")),
        table("c", &join("a", "[{ amount: c_amount }]")),
    ]);
    assert!(
        out.contains("idcards/a.yaml")
            && out.contains("idcards/b.yaml")
            && out.contains("dependency cycle between tables a, b")
            && !out.contains("idcards/c.yaml"),
        "{out}"
    );
    let out = errors(&[table("a", &join("a", "[{ amount: a_amount }]"))]);
    assert!(
        out.contains("enrich[0].from: table `a` enriches from itself") && !out.contains("cycle"),
        "{out}"
    );
    let out = errors(&[
        table("d", ""),
        table(
            "e",
            &join("d", "[{ amount: x, id: y }, { amount: z }, { amount: z }]"),
        ),
    ]);
    assert!(
        out.contains("idcards/e.yaml")
            && out.contains("enrich[0].columns[0]: a renamed column is a one-entry map `source: target`, this one has 2 entries")
            && out.contains("enrich[0].columns[2]: enriched column `z` is brought twice"),
        "{out}"
    );
}

/// A type nests at most 32 levels: 30 000 `list<` overflowed `validate`'s stack, 10 000 a
/// run's, and 1 000 failed in Delta with a backtrace naming no idcard.
#[test]
fn a_type_nests_at_most_32_levels() {
    let nested = |n: usize| {
        GOOD.replace(
            "type: \"decimal(10,2)\"",
            &format!("type: \"{}int{}\"", "list<".repeat(n), ">".repeat(n)),
        )
    };
    assert_eq!(check(&nested(32)), "ok");
    for n in [33, 30_000] {
        let out = check(&nested(n));
        assert!(
            out.contains("things.yaml:9:")
                && out.contains("schema[1].type: `amount` nests lists more than 32 deep"),
            "{n}: {out}"
        );
    }
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
fn nested_types_compile_to_a_type_tree_and_paths_are_checked_where_they_stand() {
    let nested = "  - name: address
    type: struct
    fields:
      - { name: zip, type: string, nullable: false }
      - { name: floor, type: int }
  - name: contacts
    type: list<struct>
    fields:
      - { name: email, type: string }
  - { name: tags, type: list<string> }
";
    let good = GOOD
        .replace("format: csv", "format: json")
        .replace("key: [id]", &format!("{}key: [id]", nested))
        + "pii:\n  - { column: address.zip, mode: deterministic }\n  - { column: 'contacts[].email', mode: randomized }\n  - { column: 'tags[]', mode: randomized }\nexpectations:\n  - { column: address.floor, between: { min: 0 }, action: warn }\n";
    let project = compile(&[(PathBuf::from("idcards/things.yaml"), good.clone())])
        .unwrap_or_else(|d| panic!("{d}"));
    let table = &project.tables[0];
    let address = table.column("address").unwrap();
    assert_eq!(address.data_type.name(), "struct<zip: string, floor: int>");
    assert_eq!(
        address.nested_pii[0].steps,
        [model::Step::Field("zip".into())]
    );
    let contacts = table.column("contacts").unwrap();
    assert_eq!(contacts.data_type.name(), "list<struct<email: string>>");
    assert_eq!(
        contacts.nested_pii[0].steps,
        [model::Step::Each, model::Step::Field("email".into())]
    );
    assert!(table.is_pii("tags[]") && table.is_pii("contacts[].email") && !table.is_pii("tags"));

    let bad = |from: &str, to: &str| check(&good.replace(from, to));
    for (from, to, message) in [
        ("type: struct", "type: strukt", "unknown type `strukt`"),
        (
            "type: list<string>",
            "type: list<strin>",
            "unknown type `strin`",
        ),
        (
            "- { name: tags, type: list<string> }",
            "- { name: tags, type: struct }",
            "struct column `tags` declares no fields",
        ),
        (
            "- { name: zip, type: string, nullable: false }",
            "- { name: zip, type: string, pad_left: 5 }",
            "`pad_left` applies to top-level columns only",
        ),
        (
            "column: address.zip,",
            "column: address.city,",
            "`address.city`: no field `city` (fields: zip, floor)",
        ),
        (
            "column: address.zip,",
            "column: address.floor,",
            "PII `address.floor` is int: an encrypted value is text",
        ),
        (
            "column: 'contacts[].email',",
            "column: 'contacts.email',",
            "`.email` reaches into list<struct<email: string>>, not a struct",
        ),
        (
            "column: 'tags[]',",
            "column: 'address[]',",
            "`[]` reaches into struct<zip: string, floor: int>, not a list",
        ),
        (
            "column: address.floor, between",
            "column: 'contacts[].email', between",
            "reaches into a list: an expectation checks one value per row",
        ),
        (
            "column: address.floor, between: { min: 0 }",
            "column: address, matches: x",
            "only `not_null` applies to a nested value",
        ),
        (
            "key: [id]",
            "key: [address]",
            "`address` is struct<zip: string, floor: int>: a key or join column holds one value",
        ),
        (
            "key: [id]",
            "key: [address.zip]",
            "`address.zip` is a path into a nested column: keys and joins take top-level columns",
        ),
    ] {
        let out = bad(from, to);
        assert!(out.contains(message), "{to}: {out}");
        assert!(out.contains("things.yaml:"), "{out}");
    }
    let fields_on_a_scalar = good.replace(
        "- { name: tags, type: list<string> }",
        "- name: tags\n    type: string\n    fields: [{ name: x, type: int }]",
    );
    assert!(
        check(&fields_on_a_scalar).contains("`fields` belongs to a struct, `tags` is string"),
        "{}",
        check(&fields_on_a_scalar)
    );
}

#[test]
fn a_cron_expression_is_checked_field_by_field() {
    for good in [
        "0 6 * * *",
        "*/15 0-23 1,15 jan-mar mon-fri",
        "@daily",
        "0 0 * * 7",
    ] {
        assert_eq!(compile::check_cron(good), Ok(()), "{good}");
    }
    for (bad, problem) in [
        ("0 6 * *", "4 field(s), cron has 5"),
        ("60 6 * * *", "minute `60` (allowed: 0-59)"),
        ("0 6 0 * *", "day of month `0` (allowed: 1-31)"),
        ("0 6 * * */0", "day of week `*/0` (allowed: 0-7)"),
        ("@nightly", "unknown preset"),
    ] {
        let got = compile::check_cron(bad).unwrap_err();
        assert!(got.contains(problem), "{bad}: {got}");
    }
    let out = check(&format!("{GOOD}schedule: {{ cron: \"0 25 * * *\" }}\n"));
    assert!(
        out.contains("schedule.cron: `0 25 * * *` is not a cron expression: hour `25`"),
        "{out}"
    );
}

#[test]
fn a_topic_needs_at_least_one_partition() {
    let out = check(&GOOD.replace(
        "  name: raw_things\n",
        "  name: raw_things\n  partitions: 0\n",
    ));
    assert!(out.contains("topic.partitions"), "{out}");
}

#[test]
fn a_topic_has_at_most_1024_partitions() {
    let out = check(&GOOD.replace(
        "  name: raw_things\n",
        "  name: raw_things\n  partitions: 4294967295\n",
    ));
    assert!(
        out.contains("topic.partitions") && out.contains("1024"),
        "{out}"
    );
}

#[test]
fn a_latest_by_table_needs_a_key_and_a_silver_name_of_its_own() {
    let with = |latest: &str| check(&format!("{GOOD}latest_by:\n  - {latest}\n"));
    assert_eq!(with("{ name: things_by_amount, key: [amount] }"), "ok");
    let out = with("{ name: things_by_amount, key: [] }");
    assert!(
        out.contains("things.yaml:13:")
            && out.contains(
                "latest_by[0].key: latest_by table `things_by_amount`: the key names no column"
            ),
        "{out}"
    );
    // Its own table's name: it would overwrite that silver table.
    let out = with("{ name: things, key: [amount] }");
    assert!(
        out.contains(
            "latest_by[0].name: silver table `things` is already defined in idcards/things.yaml"
        ),
        "{out}"
    );
    // Another idcard's table, in either order.
    let other = GOOD
        .replace("table: things", "table: others")
        .replace("raw_things", "raw_others");
    let latest = format!("{GOOD}latest_by:\n  - {{ name: others, key: [amount] }}\n");
    for files in [
        [
            ("things.yaml", latest.clone()),
            ("others.yaml", other.clone()),
        ],
        [
            ("others.yaml", other.clone()),
            ("things.yaml", latest.clone()),
        ],
    ] {
        let out = compile(&files.map(|(f, text)| (PathBuf::from("idcards").join(f), text)))
            .map(|_| String::from("ok"))
            .unwrap_or_else(|d| d.to_string());
        assert!(
            out.contains("silver table `others` is already defined in idcards/"),
            "{out}"
        );
    }
}

#[test]
fn the_producers_simulation_stays_within_bounds() {
    let with = |producer: &str| check(&format!("{GOOD}producer: {producer}\n"));
    assert_eq!(
        with("{ late_fraction: 1.0, late_lag_s: [0, 86400], delay_ms: [0, 0] }"),
        "ok"
    );
    let out =
        with("{ late_fraction: 1.0, late_lag_s: [18446744073709551615, 18446744073709551615] }");
    assert!(
        out.contains("producer.late_lag_s: late_lag_s [18446744073709551615, 18446744073709551615] is not a range [min, max] of at most 315360000 seconds"),
        "{out}"
    );
    let out = with("{ late_fraction: 1.5, duplicate_fraction: -0.1, delay_ms: [200, 50] }");
    assert!(
        out.contains("producer.late_fraction: late_fraction 1.5 is not a share between 0 and 1")
            && out.contains("producer.duplicate_fraction")
            && out.contains("producer.delay_ms: delay_ms [200, 50] is not a range"),
        "{out}"
    );
}

#[test]
fn a_delete_condition_and_a_value_set_are_checked_before_a_run() {
    assert_eq!(
        check(&format!(
            "{GOOD}delete_when: \"amount < 0 AND id <> 'x'\"\n"
        )),
        "ok"
    );
    for condition in ["amount = ) DROP", "amount > 0 amount", "(amount"] {
        let out = check(&format!("{GOOD}delete_when: \"{condition}\"\n"));
        assert!(
            out.contains(&format!(
                "delete_when: delete_when `{condition}` is not a SQL condition: "
            )),
            "{out}"
        );
    }
    let out = check(&format!(
        "{GOOD}expectations:\n  - {{ column: id, in_set: [], action: quarantine }}\n"
    ));
    assert!(
        out.contains("expectations[0].in_set: in_set lists no value"),
        "{out}"
    );
}

#[test]
fn a_column_pads_to_at_most_1024_characters() {
    let out = check(&GOOD.replace(
        "{ name: id, type: string, nullable: false }",
        "{ name: id, type: string, nullable: false, pad_left: 4000000000 }",
    ));
    assert!(
        out.contains("schema[0].pad_left") && out.contains("1024"),
        "{out}"
    );
}

/// `pad_char` is one character, and a `format` is a chrono format: `validate` said yes to
/// `pad_char: 'ab'` (its first character was used) and to `format: '%Q %'`, with which every
/// row of the table was then rejected, the reason naming the value, not the format.
#[test]
fn a_pad_char_is_one_character_and_a_format_is_a_chrono_format() {
    let good = check(&GOOD.replace(
        "{ name: id, type: string, nullable: false }",
        "{ name: id, type: string, nullable: false, pad_left: 5, pad_char: '0' }\n  - { name: at, type: timestamp, format: '%d/%m/%Y %H:%M' }",
    ));
    assert_eq!(good, "ok");
    for pad in ["'ab'", "''"] {
        let out = check(&GOOD.replace(
            "{ name: id, type: string, nullable: false }",
            &format!("{{ name: id, type: string, nullable: false, pad_left: 5, pad_char: {pad} }}"),
        ));
        assert!(
            out.contains("things.yaml:8:")
                && out.contains("schema[0].pad_char: pad_char must be one character"),
            "{out}"
        );
    }
    let out = check(&GOOD.replace(
        "{ name: id, type: string, nullable: false }",
        "{ name: id, type: string, nullable: false }\n  - { name: at, type: timestamp, format: '%Q %' }",
    ));
    assert!(
        out.contains("things.yaml:9:")
            && out.contains("schema[1].format: \"%Q %\" is not a chrono format")
            && out.contains("hint: use chrono's strftime specifiers"),
        "{out}"
    );
}

#[test]
fn gateway_columns_must_be_columns_of_the_table() {
    let ok = check(&format!(
        "{GOOD}gateway: {{ read: true, ingest: false, columns: [id] }}\n"
    ));
    assert_eq!(ok, "ok");
    let out = check(&format!("{GOOD}gateway: {{ columns: [id, amuont] }}\n"));
    assert!(
        out.contains("things.yaml:12:")
            && out.contains("gateway.columns[1]: column `amuont` is neither in the schema")
            && out.contains("hint: use one of: id, amount"),
        "{out}"
    );
}

#[test]
fn gateway_exposure_hides_payload_and_a_partly_hidden_key() {
    let exposure = config::GatewayConfig {
        read: true,
        ingest: true,
        columns: Some(vec!["id".into(), "amount".into()]),
    };
    let key = ["id".to_owned(), "zip".to_owned()];
    assert!(exposure.shows("amount", &key));
    assert!(!exposure.shows("zip", &key));
    assert!(exposure.shows("_offset", &key));
    assert!(!exposure.shows("_payload", &key));
    assert!(!exposure.shows("_key", &key));
    assert!(exposure.shows("_key", &key[..1]));
    assert!(config::GatewayConfig::default().shows("_payload", &key));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A valid idcard using most fields, to mutate.
    const RICH: &str = "\
table: things
description: Things.
source: { format: csv, path: things.csv, csv: { delimiter: \";\" }, rename: { amt: amount } }
topic: { name: raw_things, partitions: 3 }
schema:
  - { name: id, type: string, nullable: false }
  - { name: amount, type: \"decimal(10,2)\" }
  - { name: at, type: timestamp, format: \"%d/%m/%Y %H:%M\" }
  - { name: zip, type: string, pad_left: 5 }
key: [id, zip]
mode: DIFF
sequence_by: at
expectations:
  - { column: amount, between: { min: 0 }, action: quarantine }
  - { column: zip, matches: '^[0-9]{5}$', action: warn }
latest_by:
  - { name: things_by_zip, key: [zip] }
schedule: { cron: \"0 6 * * *\", retries: 2 }
";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Cut, overwrite or insert text anywhere: compile never panics, and every error it
        /// reports has a line inside the file, a message, and the file's name.
        #[test]
        fn a_mutated_idcard_never_panics_and_every_error_has_a_place(
            edits in prop::collection::vec((0usize..2000, 0usize..24, "[ -~\t\n]{0,10}"), 1..5)
        ) {
            let mut text = RICH.to_owned();
            for (at, len, insert) in edits {
                let at = at % (text.len() + 1);
                let end = (at + len).min(text.len());
                text.replace_range(at..end, &insert);
            }
            if let Err(diagnostics) = compile(&[(PathBuf::from("idcards/things.yaml"), text.clone())]) {
                prop_assert!(!diagnostics.0.is_empty());
                let lines = text.lines().count().max(1) + 1;
                for d in &diagnostics.0 {
                    prop_assert!(d.pos.line >= 1 && d.pos.line <= lines, "{} (of {} lines)", d, lines);
                    prop_assert!(!d.message.is_empty());
                    prop_assert!(d.to_string().starts_with("idcards/things.yaml:"), "{}", d);
                }
            }
        }
    }
}

#[test]
fn pii_entries_are_checked_where_they_stand() {
    let ok = format!("{GOOD}pii:\n  - {{ column: id, mode: deterministic, domain: ids }}\n");
    assert_eq!(check(&ok), "ok");
    let project = compile(&[(PathBuf::from("idcards/things.yaml"), ok)]).unwrap();
    let id = project.tables[0].column("id").unwrap();
    assert_eq!(
        id.pii,
        Some(model::ColumnPii {
            mode: crate::pii::PiiMode::Deterministic,
            domain: "ids".into(),
            subject: None,
        })
    );
    // A randomized key never compares equal; a decimal cannot hold ciphertext; unknown column;
    // no mode.
    let bad = format!(
        "{GOOD}pii:\n  - {{ column: id, mode: randomized }}\n  - {{ column: amount, mode: deterministic }}\n  - {{ column: nope, mode: deterministic }}\n"
    );
    let text = check(&bad);
    assert!(text.contains("things.yaml:14:"), "{text}");
    assert!(
        text.contains("`id` is a key column: randomized values never compare equal"),
        "{text}"
    );
    assert!(
        text.contains("PII `amount` is decimal(10,2): an encrypted value is text"),
        "{text}"
    );
    assert!(
        text.contains("column `nope` is not in the schema"),
        "{text}"
    );
    let no_mode = format!("{GOOD}pii:\n  - {{ column: id }}\n");
    assert!(check(&no_mode).contains("mode"), "{}", check(&no_mode));
}

#[test]
fn a_pii_subject_is_a_scalar_column_of_the_table_and_only_for_randomized_values() {
    let text = GOOD.replace(
        "  - { name: amount, type: \"decimal(10,2)\" }\n",
        "  - { name: amount, type: \"decimal(10,2)\" }\n  - { name: note, type: string }\n  - { name: tags, type: list<string> }\n",
    );
    let ok = format!("{text}pii:\n  - {{ column: note, mode: randomized, subject: id }}\n");
    assert_eq!(check(&ok), "ok");
    let project = compile(&[(PathBuf::from("idcards/things.yaml"), ok)]).unwrap();
    let note = project.tables[0].column("note").unwrap();
    assert_eq!(note.pii.as_ref().unwrap().subject.as_deref(), Some("id"));
    for (entry, expected) in [
        (
            "{ column: note, mode: deterministic, subject: id }",
            "a subject key is for randomized values",
        ),
        (
            "{ column: note, mode: randomized, subject: who }",
            "subject column `who` is not in the schema",
        ),
        (
            "{ column: note, mode: randomized, subject: tags }",
            "subject column `tags` is list<string>: it must be a single value",
        ),
        (
            "{ column: note, mode: randomized, subject: note }",
            "`note` cannot be its own subject",
        ),
    ] {
        let out = check(&format!("{text}pii:\n  - {entry}\n"));
        assert!(out.contains(expected), "{entry}: {out}");
        assert!(out.contains("subject"), "{entry}: {out}");
    }
}
