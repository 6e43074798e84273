//! Nested JSON sources (the `customer_profiles` idcard): struct and list shapes and their nulls
//! kept to silver (read back by the Python deltalake reader), every nested reject class with
//! its path, a JSON array file read like JSON Lines, PII leaves encrypted in place, gold SQL
//! reaching into structs and lists and joining on an encrypted leaf.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use framework::lake::Layer;
use serde_json::{Value, json};

use crate::common::*;

const TABLE: &str = "customer_profiles";
const FILE: &str = "customer_profiles.jsonl";

/// Silver `customer_profiles` as the Python deltalake reader sees it, one JSON object per row.
fn silver_by_python(lake: &Path) -> Vec<Value> {
    let script = r#"
import json, sys
from deltalake import DeltaTable
rows = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
for r in rows:
    r["updated_at"] = r["updated_at"].isoformat()
    for k in ("_sequence",):
        r.pop(k, None)
print(json.dumps(rows))
"#;
    let table = lake.join("silver").join(TABLE);
    serde_json::from_value(python_json(script, [table.as_os_str()])).unwrap()
}

/// The source's records by `customer_unique_id` (JSON Lines).
fn source_profiles(path: &Path) -> BTreeMap<String, Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["customer_unique_id"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// `value` with every leaf at a PII path decrypted (the paths of the idcard).
fn decrypted(mut row: Value, decrypt: &dyn Fn(&str) -> String) -> Value {
    fn each(value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
        if let Some(items) = value.as_array_mut() {
            items.iter_mut().for_each(f);
        }
    }
    let open = |v: &mut Value| {
        if let Some(text) = v.as_str() {
            assert!(
                !text.contains('@') && !text.starts_with("+55"),
                "a PII leaf in clear in silver: {text}"
            );
            *v = Value::String(decrypt(text));
        }
    };
    open(&mut row["address"]["zip_code_prefix"]);
    open(&mut row["address"]["city"]);
    each(&mut row["contacts"], &mut |c| open(&mut c["value"]));
    row
}

#[test]
fn nested_json_reaches_silver_with_its_shapes_nulls_and_pii_leaves_encrypted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--table", TABLE, "--data"]).arg(sample());
    ok(run);

    let keys = framework::pii::keyring(&project(), &repo()).unwrap();
    let decrypt =
        |text: &str| String::from_utf8(keys.decrypt_any(text).expect("decrypts")).unwrap();
    let expected = source_profiles(&sample().join(FILE));
    let rows = silver_by_python(&lake);
    assert_eq!(rows.len(), expected.len(), "one silver row per profile");
    let (mut null_preferences, mut null_cities, mut empty_contacts) = (0, 0, 0);
    for row in rows {
        let id = row["customer_unique_id"].as_str().unwrap().to_owned();
        let source = &expected[&id];
        assert_ne!(
            row["address"]["zip_code_prefix"], source["address"]["zip_code_prefix"],
            "{id}: zip in clear"
        );
        let mut row = decrypted(row, &decrypt);
        for meta in ["_partition", "_offset"] {
            row.as_object_mut().unwrap().remove(meta);
        }
        // Source times end in `Z`; Python writes `+00:00`.
        let mut source = source.clone();
        let at = source["updated_at"]
            .as_str()
            .unwrap()
            .replace('Z', "+00:00");
        source["updated_at"] = at.into();
        // The reader returns every struct field, null or not.
        if source["address"]["city"].is_null() {
            source["address"]["city"] = Value::Null;
            null_cities += 1;
        }
        null_preferences += usize::from(source["preferences"].is_null());
        empty_contacts += usize::from(source["contacts"] == json!([]));
        assert_eq!(row, source, "profile {id}");
    }
    // The sample exercises each null and empty shape.
    assert!(
        null_preferences > 100 && null_cities > 100 && empty_contacts > 100,
        "{null_preferences} {null_cities} {empty_contacts}"
    );
}

/// The reject test's source: one record per reject class, quarantine cases and good rows. Line
/// numbers matter (the reject table keeps them): line 16 is blank.
const RECORDS: &str = r#"{"customer_unique_id":"p1","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","city":"sao paulo","state":"SP"},"contacts":[{"kind":"email","value":"p1@example.com","verified":true}],"preferences":null,"tags":["a"]}
{"customer_unique_id":"p2","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"SP"},"contacts":[{"kind":"email","value":"p2@example.com","verified":"yes"}]}
{"customer_unique_id":"p3","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"SP"},"contacts":[{"kind":null,"value":"p3@example.com"}]}
{"customer_unique_id":"p4","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"SP","floor":3}}
{"customer_unique_id":"p5","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"SP"},"contacts":{"kind":"email","value":"p5@example.com"}}
{"customer_unique_id":"p6","updated_at":"yesterday","address":{"zip_code_prefix":"01001","state":"SP"}}
{"customer_unique_id":"p7", "updated_at":
[1,2]
{"customer_unique_id":"p9","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"SP"},"loyalty":1}
{"customer_unique_id":"p10","updated_at":{"t":1},"address":{"zip_code_prefix":"01001","state":"SP"}}
{"customer_unique_id":"p11","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":1001,"state":"SP"}}
{"customer_unique_id":"p12","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"ABCDE","city":"secret city twelve","state":"SP"}}
{"customer_unique_id":"p13","updated_at":"2018-01-01T00:00:00Z","address":{"zip_code_prefix":"01001","state":"sp"}}
{"customer_unique_id":"p14","updated_at":"2018-01-01T00:00:00Z","address":null}
{"customer_unique_id":"p15","updated_at":"2018-01-01T00:00:00Z","address":{"city":"santos","state":"SP"}}

{"customer_unique_id":"p17","updated_at":"2018-01-02T00:00:00Z","address":{"zip_code_prefix":"02002"},"contacts":[],"tags":null}
"#;

fn data_with(dir: &Path, name: &str, text: &str) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(name), text).unwrap();
    data
}

/// The idcards with `customer_profiles` reading `file` instead.
fn idcards_reading(dir: &Path, file: &str) -> PathBuf {
    idcards_with(
        dir,
        "customer_profiles.yaml",
        "path: customer_profiles.jsonl",
        &format!("path: {file}"),
    )
}

fn run_profiles(lake: &Path, idcards: &Path, data: &Path) -> std::process::Output {
    let mut run = Command::new(env!("CARGO_BIN_EXE_framework"));
    run.arg("--idcards")
        .arg(idcards)
        .arg("--models")
        .arg(repo().join("models"))
        .arg("--expectations")
        .arg(repo().join("expectations"))
        .arg("--lake")
        .arg(lake)
        .args(["run", "--table", TABLE, "--data"])
        .arg(data);
    output(run)
}

#[test]
fn every_nested_reject_class_lands_in_the_reject_table_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_with(dir.path(), FILE, RECORDS);
    let lake = dir.path().join("lake");
    let out = run_profiles(&lake, &idcards(), &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rejects = query(
        &lake,
        Layer::Reject,
        TABLE,
        "SELECT _source_line, _reason FROM t ORDER BY _source_line",
    );
    let expected = [
        (
            2,
            "column `contacts`: at `contacts[0].verified`: expected a boolean, found a string",
        ),
        (
            3,
            "column `contacts`: at `contacts[0].kind`: null in a non-nullable field",
        ),
        (
            4,
            "column `address`: at `address.floor`: unknown field (not in the idcard's schema)",
        ),
        (
            5,
            "column `contacts`: at `contacts`: expected an array, found an object",
        ),
        (
            6,
            "column `updated_at`: \"yesterday\" is not a valid timestamp",
        ),
        (
            7,
            "customer_profiles.jsonl:7: not JSON: EOF while parsing a value at line 1 column 41",
        ),
        (
            8,
            "customer_profiles.jsonl:8: expected a JSON object, found an array",
        ),
        (
            9,
            "customer_profiles.jsonl:9: field `loyalty` is not in the idcard's schema (add it to `schema:` or map it with `source.rename`)",
        ),
        (
            10,
            "customer_profiles.jsonl:10: field `updated_at`: expected a single value, found an object (declare the column as `struct` or `list<...>`)",
        ),
        (
            11,
            "column `address`: at `address.zip_code_prefix`: expected a string (an encrypted leaf), found a number",
        ),
        (
            12,
            "expectation `address.zip_code_prefix_matches` failed (action quarantine; checked at the edge, before encryption)",
        ),
        (
            15,
            "column `address`: at `address.zip_code_prefix`: null in a non-nullable field",
        ),
    ];
    for (line, reason) in expected {
        assert!(
            rejects.contains(&format!("| {line:<12} | {reason}")),
            "line {line}: {reason}\nnot in:\n{rejects}"
        );
    }
    assert_eq!(count(&lake, Layer::Reject, TABLE), 12, "{rejects}");
    // A reject of a table with PII keeps its text sealed: line 12's city is nowhere in clear.
    let payloads = query(&lake, Layer::Reject, TABLE, "SELECT _payload FROM t");
    assert!(!payloads.contains("secret city twelve"), "{payloads}");

    let quarantine = query(
        &lake,
        Layer::Quarantine,
        TABLE,
        "SELECT customer_unique_id, _failed_rule FROM t ORDER BY customer_unique_id",
    );
    for (key, rule) in [
        ("p13", "address.state_matches"),
        ("p14", "address_not_null"),
    ] {
        assert!(
            quarantine.contains(&format!("| {key:<18} | {rule}")),
            "{key} {rule} not in:\n{quarantine}"
        );
    }
    assert_eq!(count(&lake, Layer::Quarantine, TABLE), 2, "{quarantine}");

    // The good rows, nulls and empty lists kept: 16 records = 2 in silver + 2 quarantined + 12 rejects.
    let silver = query(
        &lake,
        Layer::Silver,
        TABLE,
        "SELECT customer_unique_id, address.state AS state, cardinality(contacts) AS contacts, \
         preferences IS NULL AS no_preferences, tags FROM t ORDER BY customer_unique_id",
    );
    assert!(
        silver.contains("| p1                 | SP    | 1        | true           | [a]  |"),
        "{silver}"
    );
    assert!(
        silver.contains("| p17                |       | 0        | true           |      |"),
        "{silver}"
    );
    assert_eq!(count(&lake, Layer::Silver, TABLE), 2, "{silver}");
}

#[test]
fn a_json_array_file_reads_like_json_lines_and_a_broken_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<&str> = RECORDS.lines().collect();
    // p1, p2 (a reject) and p17, as one array over several lines.
    let array = format!(
        "[\n  {},\n  {},\n\n  {}\n]\n",
        lines[0], lines[1], lines[16]
    );
    let data = data_with(dir.path(), "profiles.json", &array);
    let idcards = idcards_reading(dir.path(), "profiles.json");
    let lake = dir.path().join("lake");
    let out = run_profiles(&lake, &idcards, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let silver = query(
        &lake,
        Layer::Silver,
        TABLE,
        "SELECT customer_unique_id FROM t ORDER BY 1",
    );
    assert!(
        silver.contains("p1 ") && silver.contains("p17") && !silver.contains("p2 "),
        "{silver}"
    );
    let rejects = query(
        &lake,
        Layer::Reject,
        TABLE,
        "SELECT _source_line, _reason FROM t",
    );
    assert!(
        rejects.contains("| 3            | column `contacts`: at `contacts[0].verified`"),
        "the element's line:\n{rejects}"
    );

    std::fs::write(data.join("profiles.json"), &array[..array.len() - 3]).unwrap();
    let out = run_profiles(&dir.path().join("lake2"), &idcards, &data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("profiles.json: line 5: the JSON array is not closed"),
        "{stderr}"
    );
}

#[test]
fn gold_sql_reaches_into_structs_and_lists_and_joins_on_an_encrypted_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--table", TABLE, "--table", "customers", "--data"])
        .arg(sample());
    ok(run);

    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    std::fs::write(
        models.join("gold/gold_profile_states.sql"),
        "-- Profiles per state: contacts on file, and the customer rows at the profile's zip.\n\
         SELECT p.address.state AS state,\n\
                count(*) AS profiles,\n\
                sum(cardinality(p.contacts)) AS contacts,\n\
                coalesce(sum(m.n), 0) AS customers_at_zip\n\
         FROM {{ source('silver', 'customer_profiles') }} p\n\
         LEFT JOIN (\n\
           SELECT customer_unique_id, customer_zip_code_prefix, count(*) AS n\n\
           FROM {{ source('silver', 'customers') }}\n\
           GROUP BY customer_unique_id, customer_zip_code_prefix\n\
         ) m\n\
           ON m.customer_unique_id = p.customer_unique_id\n\
          AND m.customer_zip_code_prefix = p.address.zip_code_prefix\n\
         GROUP BY p.address.state\n",
    )
    .unwrap();
    let mut build = Command::new(env!("CARGO_BIN_EXE_framework"));
    build
        .arg("--idcards")
        .arg(idcards())
        .arg("--models")
        .arg(&models)
        .arg("--lake")
        .arg(&lake)
        .args(["build", "--select", "gold_profile_states"]);
    ok(build);

    // Independently, from the source files: per state, profiles, contacts and the customer rows
    // of the same person at the profile's (padded) zip.
    let profiles = source_profiles(&sample().join(FILE));
    let mut expected: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut zip_of: HashMap<String, (String, String)> = HashMap::new();
    for (id, p) in &profiles {
        let state = p["address"]["state"].as_str().unwrap().to_owned();
        let entry = expected.entry(state.clone()).or_default();
        entry.0 += 1;
        entry.1 += p["contacts"].as_array().unwrap().len() as u64;
        let zip = p["address"]["zip_code_prefix"].as_str().unwrap().to_owned();
        zip_of.insert(id.clone(), (zip, state));
    }
    let ids = csv_values("olist_customers_dataset.csv", "customer_unique_id");
    let zips = csv_values("olist_customers_dataset.csv", "customer_zip_code_prefix");
    for (id, zip) in ids.iter().zip(&zips) {
        if let Some((profile_zip, state)) = zip_of.get(id)
            && *profile_zip == format!("{zip:0>5}")
        {
            expected.get_mut(state).unwrap().2 += 1;
        }
    }
    let mut want: Vec<String> = expected
        .iter()
        .map(|(s, (p, c, m))| format!("{s} | {p} | {c} | {m}"))
        .collect();
    want.sort();
    let got = batch_rows(&batches(
        &lake,
        Layer::Gold,
        "gold_profile_states",
        "SELECT state, profiles, contacts, customers_at_zip FROM t",
    ));
    assert_eq!(got, want);
    // Every person's customer rows share the zip of their latest row, but not all: the join
    // matched most, which it could not if the two ciphertexts of one zip differed.
    let matched: u64 = expected.values().map(|e| e.2).sum();
    assert!(
        matched > 2900,
        "{matched} customer rows joined on the encrypted zip"
    );
}
