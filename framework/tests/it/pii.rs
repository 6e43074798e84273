//! PII encrypted at the edge: no plaintext anywhere under the lake or on the topic log, values
//! that decrypt back, joins on encrypted columns, edge expectations, keys per environment.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field};
use framework::bus::EmbeddedLog;
use framework::lake::{Lake, Layer};

use crate::common::*;

/// Each CSV of `data` as (header, rows).
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let bytes = std::fs::read(path).unwrap();
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&bytes)
        .to_vec();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .filter_map(Result::ok)
        .map(|r| r.iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// The plaintexts the lake must not hold: every value of a PII column of `data` (zip codes
/// padded as the idcards say), less the values that also occur in a column that is not PII
/// (a city that is also a seller's or a geolocation's city is there in clear, legitimately).
fn plaintexts(data: &Path) -> HashSet<String> {
    let project = project();
    let mut secret = HashSet::new();
    let mut public = HashSet::new();
    for table in &project.tables {
        if table.config.source.format == framework::idcard::config::SourceFormat::Json {
            json_plaintexts(
                table,
                &data.join(&table.config.source.path),
                &mut secret,
                &mut public,
            );
            continue;
        }
        let (header, rows) = read_csv(&data.join(&table.config.source.path));
        for (i, name) in header.iter().enumerate() {
            let column = table.column(name);
            for row in &rows {
                let Some(value) = row.get(i).filter(|v| !v.is_empty()) else {
                    continue;
                };
                match column.and_then(|c| c.pii.as_ref().map(|_| c)) {
                    Some(c) => {
                        let value = match c.pad_left {
                            Some((width, pad)) if value.len() < width as usize => {
                                format!(
                                    "{}{value}",
                                    pad.to_string().repeat(width as usize - value.len())
                                )
                            }
                            _ => value.clone(),
                        };
                        secret.insert(value);
                    }
                    None => {
                        public.insert(value.clone());
                    }
                }
            }
        }
    }
    secret.retain(|v| !public.contains(v) && v.len() >= 4);
    secret
}

/// A JSON Lines source's string leaves: those at a PII column or path are secret, others public.
fn json_plaintexts(
    table: &framework::idcard::Table,
    path: &Path,
    secret: &mut HashSet<String>,
    public: &mut HashSet<String>,
) {
    fn leaves(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::String(s) => out.push((at.to_owned(), s.clone())),
            serde_json::Value::Array(items) => {
                for item in items {
                    leaves(item, &format!("{at}[]"), out);
                }
            }
            serde_json::Value::Object(fields) => {
                for (name, inner) in fields {
                    let below = if at.is_empty() {
                        name.clone()
                    } else {
                        format!("{at}.{name}")
                    };
                    leaves(inner, &below, out);
                }
            }
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let mut found = Vec::new();
        leaves(&value, "", &mut found);
        for (at, text) in found {
            if table.is_pii(&at) {
                secret.insert(text);
            } else {
                public.insert(text);
            }
        }
    }
}

/// The plaintexts to look for: each as a whole cell, and quoted as a JSON string inside a text
/// (one regex over all of them, so a scan is one pass).
struct Secrets {
    values: HashSet<String>,
    quoted: regex::Regex,
}

impl Secrets {
    fn new(values: HashSet<String>) -> Self {
        let quoted = values
            .iter()
            .map(|s| regex::escape(&serde_json::to_string(s).unwrap()))
            .collect::<Vec<_>>()
            .join("|");
        Self {
            quoted: regex::RegexBuilder::new(&quoted)
                .size_limit(1 << 28)
                .build()
                .unwrap(),
            values,
        }
    }

    /// Where a plaintext shows in `text`: all of it, or quoted inside it.
    fn leak(&self, text: &str) -> Option<String> {
        if self.values.contains(text) {
            return Some(text.to_owned());
        }
        self.quoted.find(text).map(|m| m.as_str().to_owned())
    }
}

/// Every string cell of every Parquet file under `dir`, and every other file's bytes as text.
fn scan_files(dir: &Path, secrets: &Secrets, found: &mut Vec<String>) {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            let file = std::fs::File::open(&entry).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let mut texts = Vec::new();
                for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                    string_leaves(field.name(), column, &mut texts);
                }
                for (name, column) in texts {
                    let field = Field::new(name, DataType::Utf8, true);
                    let text = cast(&column, &DataType::Utf8).unwrap();
                    let text = text.as_string::<i32>();
                    for i in 0..text.len() {
                        if text.is_valid(i)
                            && let Some(hit) = secrets.leak(text.value(i))
                        {
                            found.push(format!(
                                "{}: column {}: {hit:?}",
                                entry.display(),
                                field.name()
                            ));
                        }
                    }
                }
            }
        } else {
            let bytes = std::fs::read(&entry).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(hit) = secrets.quoted.find(&text).map(|m| m.as_str()) {
                found.push(format!("{}: {hit:?}", entry.display()));
            }
        }
    }
}

/// The string arrays in `column`, also inside structs and lists, each with its path.
fn string_leaves(
    name: &str,
    column: &deltalake::arrow::array::ArrayRef,
    out: &mut Vec<(String, deltalake::arrow::array::ArrayRef)>,
) {
    match column.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            out.push((name.to_owned(), column.clone()));
        }
        DataType::Struct(fields) => {
            let structs = column.as_struct();
            for (field, inner) in fields.iter().zip(structs.columns()) {
                string_leaves(&format!("{name}.{}", field.name()), inner, out);
            }
        }
        DataType::List(_) => {
            string_leaves(&format!("{name}[]"), column.as_list::<i32>().values(), out);
        }
        _ => {}
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every message (key and value) of every topic of the lake's embedded log, decoded.
fn scan_topics(lake: &Path, secrets: &Secrets, found: &mut Vec<String>) -> usize {
    let bus_dir = Lake::new(lake).bus_dir().unwrap();
    let log = EmbeddedLog::new(bus_dir);
    let mut messages = 0;
    for table in project().tables {
        let topic = table.topic();
        let partitions = log.partitions(topic).unwrap();
        for p in 0..partitions {
            // A run gives back the messages bronze stored (punched out of the files: nothing
            // of them is left to leak); the rest is read.
            let start = log.start_offset(topic, p).unwrap();
            for message in log.read(topic, p, start, usize::MAX).unwrap() {
                messages += 1;
                for bytes in [&message.key[..], &message.value[..]] {
                    let text = String::from_utf8_lossy(bytes);
                    if let Some(hit) = secrets.leak(&text) {
                        found.push(format!("topic {topic}/{p}: {hit:?}"));
                    }
                }
            }
        }
    }
    messages
}

/// A copy of the sample with customers that only this test knows: one good (its city a marker),
/// one whose zip breaks the `matches` rule (a reject at the edge), one broken CSV record.
fn data_with_markers(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    copy_dir(&sample(), &data);
    let customers = data.join("olist_customers_dataset.csv");
    let mut text = std::fs::read_to_string(&customers).unwrap();
    text.push_str("ffff0000000000000000000000000001,eeee0000000000000000000000000001,99999,plaincity marker one,SP\n");
    text.push_str("ffff0000000000000000000000000002,eeee0000000000000000000000000002,ABCDE,plaincity marker two,SP\n");
    text.push_str("ffff0000000000000000000000000003,eeee0000000000000000000000000003,99998,plaincity marker three,SP,extra\n");
    std::fs::write(&customers, text).unwrap();
    data
}

#[test]
fn no_plaintext_of_a_pii_value_reaches_the_topic_log_or_any_file_of_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_with_markers(dir.path());
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(&data);
    let out = ok(run);
    // The statistics settings name only columns the files hold (no kernel warning about a
    // partition column).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("dataSkippingStatsColumns"), "{stderr}");

    let mut secrets = plaintexts(&data);
    for marker in [
        "plaincity marker one",
        "plaincity marker two",
        "plaincity marker three",
        "ABCDE",
    ] {
        assert!(
            secrets.contains(marker) || marker.contains("three"),
            "{marker} is a PII value of the test"
        );
        secrets.insert(marker.to_owned());
    }
    // Zip codes are 5-digit strings, as are many `_source_line` values of every message (a
    // first run flagged `"_source_line":"11081"` of products): the scan looks for the longer
    // values (cities, review texts) and the markers; the zip codes are checked by decryption
    // in the next test (stored value != plaintext, decrypts to the padded source).
    secrets.retain(|v| v.len() >= 8 || v == "ABCDE");
    assert!(
        secrets.len() > 100,
        "only {} PII plaintexts to look for",
        secrets.len()
    );
    let secrets = Secrets::new(secrets);
    let mut found = Vec::new();
    let messages = scan_topics(&lake, &secrets, &mut found);
    assert!(messages > 1000, "{messages} messages read back");
    scan_files(&lake, &secrets, &mut found);
    assert!(
        found.is_empty(),
        "{} plaintext PII value(s) found, e.g.:\n{}",
        found.len(),
        found
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The Delta log keeps no statistics (min/max) of a column holding ciphertext; the others
    // keep theirs.
    for (layer, table, sealed, plain) in [
        (
            "silver",
            "customers",
            &["customer_zip_code_prefix", "customer_city"][..],
            "customer_id",
        ),
        (
            "bronze",
            "customers",
            &["customer_zip_code_prefix", "customer_city"],
            "customer_id",
        ),
        (
            "silver",
            "customers_unique",
            &["customer_city"],
            "customer_unique_id",
        ),
        ("silver", "orders", &["customer_city"], "order_id"),
        (
            "silver",
            "sellers",
            &["seller_zip_code_prefix"],
            "seller_id",
        ),
        (
            "silver",
            "customer_profiles",
            &["address", "contacts"],
            "customer_unique_id",
        ),
        ("reject", "customers", &["_payload"], "_reason"),
    ] {
        let columns = stats_columns(&lake.join(layer).join(table));
        assert!(
            columns.contains(plain),
            "{layer}/{table}: no statistics at all: {columns:?}"
        );
        for column in sealed {
            assert!(
                !columns.contains(*column),
                "{layer}/{table}: the Delta log keeps statistics of {column}"
            );
        }
    }

    // The edge rule and the broken record are rejects with their reasons, their text sealed.
    let rejects = query(
        &lake,
        Layer::Reject,
        "customers",
        "SELECT _reason FROM t ORDER BY _source_line",
    );
    assert!(
        rejects.contains("expectation `customer_zip_code_prefix_matches` failed (action quarantine; checked at the edge, before encryption)"),
        "{rejects}"
    );
    assert!(rejects.contains("expected 5 fields, found 6"), "{rejects}");
}

/// The columns with min/max statistics in any `add` action of a table's Delta log.
fn stats_columns(table: &Path) -> HashSet<String> {
    let mut columns = HashSet::new();
    for entry in walk(&table.join("_delta_log")) {
        if entry.extension().is_none_or(|e| e != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&entry).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(stats) = action["add"]["stats"].as_str() else {
                continue;
            };
            let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
            for side in ["minValues", "maxValues"] {
                if let Some(values) = stats[side].as_object() {
                    columns.extend(values.keys().cloned());
                }
            }
        }
    }
    columns
}

/// `customer_id` -> (zip padded, city) from the customers CSV.
fn customers_csv(data: &Path) -> HashMap<String, (String, String)> {
    let (_, rows) = read_csv(&data.join("olist_customers_dataset.csv"));
    rows.into_iter()
        .filter(|r| r.len() == 5)
        .map(|r| (r[0].clone(), (format!("{:0>5}", r[2]), r[3].clone())))
        .collect()
}

fn strings(batch: &deltalake::arrow::array::RecordBatch, i: usize) -> Vec<Option<String>> {
    let column = cast(batch.column(i), &DataType::Utf8).unwrap();
    let column = column.as_string::<i32>();
    (0..column.len())
        .map(|r| column.is_valid(r).then(|| column.value(r).to_owned()))
        .collect()
}

#[test]
fn encrypted_values_decrypt_to_the_source_and_joins_on_them_still_match() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    let project = project();
    let keys = framework::pii::keyring(&project, &repo()).unwrap();
    let expected = customers_csv(&sample());
    let decrypt =
        |text: &str| String::from_utf8(keys.decrypt_any(text).expect("decrypts")).unwrap();

    let customers = batches(
        &lake,
        Layer::Silver,
        "customers",
        "SELECT customer_id, customer_zip_code_prefix, customer_city FROM t",
    );
    let mut seen = 0;
    let mut ciphertext_of_city = HashMap::new();
    for batch in &customers {
        let (ids, zips, cities) = (strings(batch, 0), strings(batch, 1), strings(batch, 2));
        for r in 0..batch.num_rows() {
            let id = ids[r].clone().unwrap();
            let (zip, city) = &expected[&id];
            let (zip_sealed, city_sealed) = (zips[r].clone().unwrap(), cities[r].clone().unwrap());
            assert_ne!(&zip_sealed, zip, "customer {id}: zip in clear");
            assert_eq!(&decrypt(&zip_sealed), zip, "customer {id}");
            assert_eq!(&decrypt(&city_sealed), city, "customer {id}");
            // Deterministic: one city, one ciphertext.
            let previous = ciphertext_of_city.insert(city.clone(), city_sealed.clone());
            assert!(
                previous.is_none_or(|p| p == city_sealed),
                "city {city}: two ciphertexts"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len(), "customers in silver");

    // Orders carry the customer's city by an enrichment join: the same ciphertext.
    let orders = batches(
        &lake,
        Layer::Silver,
        "orders",
        "SELECT customer_id, customer_city FROM t",
    );
    let mut orders_seen = 0;
    for batch in &orders {
        let (ids, cities) = (strings(batch, 0), strings(batch, 1));
        for r in 0..batch.num_rows() {
            let id = ids[r].clone().unwrap();
            if let Some((_, city)) = expected.get(&id) {
                assert_eq!(
                    cities[r].as_deref(),
                    ciphertext_of_city.get(city).map(String::as_str),
                    "order of {id}"
                );
                orders_seen += 1;
            }
        }
    }
    assert!(orders_seen > 90, "{orders_seen} orders matched a customer");

    // Randomized: review messages decrypt, and two equal messages differ as ciphertexts.
    let reviews = batches(
        &lake,
        Layer::Silver,
        "reviews",
        "SELECT review_comment_message FROM t WHERE review_comment_message IS NOT NULL",
    );
    let (_, rows) = read_csv(&sample().join("olist_order_reviews_dataset.csv"));
    let messages: HashSet<String> = rows
        .iter()
        .filter_map(|r| r.get(4).filter(|m| !m.is_empty()).cloned())
        .collect();
    let mut decrypted = HashSet::new();
    let mut sealed_count = 0;
    for batch in &reviews {
        for sealed in strings(batch, 0).into_iter().flatten() {
            let plain = decrypt(&sealed);
            assert!(
                messages.contains(&plain),
                "a review message that is not in the source"
            );
            decrypted.insert(plain);
            sealed_count += 1;
        }
    }
    assert_eq!(decrypted, messages, "review messages decrypted");
    assert!(sealed_count >= messages.len());
}

#[test]
fn a_second_environment_with_only_another_root_key_reads_the_data_and_a_wrong_key_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let keyset = dir.path().join("prod.keyset.json");
    let root_a = dir.path().join("a.key");
    let root_b = dir.path().join("b.key");
    let root_c = dir.path().join("c.key");
    let keys = |root: &Path| {
        let mut cmd = framework(&dir.path().join("lake"));
        cmd.env("FRAMEWORK_ENV", "prod")
            .env("FRAMEWORK_KEYSET", &keyset)
            .env_remove("FRAMEWORK_ROOT_KEY")
            .env("FRAMEWORK_ROOT_KEY_FILE", root);
        cmd
    };
    for root in [&root_a, &root_b, &root_c] {
        let mut new_root = keys(root);
        new_root.args(["keys", "new-root", "--out"]).arg(root);
        ok(new_root);
    }
    // prod has no keyset yet: a clear error, nothing made.
    let lake = dir.path().join("lake");
    let mut early = keys(&root_a);
    early
        .args(["run", "--table", "sellers", "--data"])
        .arg(sample());
    let out = output(early);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("framework keys create --env prod"), "{err}");
    assert!(!keyset.exists());

    let mut create = keys(&root_a);
    create.args(["keys", "create"]);
    ok(create);
    let mut rewrap = keys(&root_a);
    rewrap
        .args(["keys", "rewrap", "--add-root-file"])
        .arg(&root_b);
    ok(rewrap);

    // Written in the environment that holds a; read in the one that holds only b.
    let mut run = keys(&root_a);
    run.args(["run", "--table", "sellers", "--data"])
        .arg(sample());
    ok(run);
    let project = project();
    let (_, rows) = read_csv(&sample().join("olist_sellers_dataset.csv"));
    let expected: HashMap<String, String> = rows
        .into_iter()
        .map(|r| (r[0].clone(), format!("{:0>5}", r[1])))
        .collect();
    let reader = framework::pii::keyset::Keyset::load(&keyset)
        .unwrap()
        .unwrap();
    let b_only = framework::pii::keyset::root_keys_from_file(&root_b).unwrap();
    let by_b = reader.unlock(&keyset, &b_only).unwrap();
    let sellers = batches(
        &lake,
        Layer::Silver,
        "sellers",
        "SELECT seller_id, seller_zip_code_prefix FROM t",
    );
    let mut checked = 0;
    for batch in &sellers {
        let (ids, zips) = (strings(batch, 0), strings(batch, 1));
        for r in 0..batch.num_rows() {
            let plain = by_b
                .decrypt("location", zips[r].as_deref().unwrap())
                .unwrap();
            assert_eq!(
                String::from_utf8(plain).unwrap(),
                expected[ids[r].as_deref().unwrap()]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len());

    // A process holding only c is refused, with the key id, domain and keyset named and no key.
    let mut wrong = keys(&root_c);
    wrong
        .args(["run", "--table", "sellers", "--data"])
        .arg(sample());
    let out = output(wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("of PII domain `") && err.contains("` is wrapped under root key(s)"),
        "{err}"
    );
    assert!(err.contains("prod.keyset.json"), "{err}");
    for root in [&root_a, &root_b, &root_c] {
        let key = std::fs::read_to_string(root).unwrap();
        assert!(!err.contains(key.trim()), "a root key in the error");
    }
    let _ = project;
}

/// The data key id of a wire-format value.
fn key_id(sealed: &str) -> u32 {
    use base64::Engine as _;
    let wire = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(sealed)
        .unwrap();
    u32::from_be_bytes(wire[1..5].try_into().unwrap())
}

/// `framework` on `lake` in a `stage` environment: its keyset and root key file as given, no
/// root key from the environment.
fn staged(lake: &Path, keyset: &Path, root: &Path) -> std::process::Command {
    let mut cmd = framework(lake);
    cmd.env("FRAMEWORK_ENV", "stage")
        .env("FRAMEWORK_KEYSET", keyset)
        .env_remove("FRAMEWORK_ROOT_KEY")
        .env("FRAMEWORK_ROOT_KEY_FILE", root);
    cmd
}

#[test]
fn after_a_rotation_new_values_use_the_new_key_and_old_ones_still_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let keyset = dir.path().join("stage.keyset.json");
    let root = dir.path().join("root.key");
    let lake = dir.path().join("lake");
    let cmd = || staged(&lake, &keyset, &root);
    for args in [
        vec!["keys", "new-root", "--out", root.to_str().unwrap()],
        vec!["keys", "create"],
    ] {
        let mut c = cmd();
        c.args(&args);
        ok(c);
    }
    let mut first = cmd();
    first
        .args(["run", "--table", "sellers", "--data"])
        .arg(sample());
    ok(first);
    let mut rotate = cmd();
    rotate.args(["keys", "rotate", "--domain", "location"]);
    let out = ok(rotate);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("now encrypts with data key"), "{said}");
    // A second delivery: one new seller.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("olist_sellers_dataset.csv"),
        "seller_id,seller_zip_code_prefix,seller_city,seller_state\nrotated-seller,4321,campinas,SP\n",
    )
    .unwrap();
    let mut second = cmd();
    second
        .args(["run", "--table", "sellers", "--data"])
        .arg(&data);
    ok(second);
    let mut list = cmd();
    list.args(["keys", "list"]);
    let listed = String::from_utf8_lossy(&ok(list).stdout).to_string();
    assert!(
        listed.contains("(primary)") && listed.matches("location").count() == 2,
        "{listed}"
    );

    let file = framework::pii::keyset::Keyset::load(&keyset)
        .unwrap()
        .unwrap();
    let roots = framework::pii::keyset::root_keys_from_file(&root).unwrap();
    let keys = file.unlock(&keyset, &roots).unwrap();
    let newest = file.domains["location"].primary;
    let sellers = batches(
        &lake,
        Layer::Silver,
        "sellers",
        "SELECT seller_id, seller_zip_code_prefix FROM t",
    );
    let (mut old, mut new) = (0, 0);
    for batch in &sellers {
        let (ids, zips) = (strings(batch, 0), strings(batch, 1));
        for r in 0..batch.num_rows() {
            let sealed = zips[r].as_deref().unwrap();
            let plain = String::from_utf8(keys.decrypt("location", sealed).unwrap()).unwrap();
            assert_eq!(plain.len(), 5, "{plain}");
            if ids[r].as_deref() == Some("rotated-seller") {
                assert_eq!(plain, "04321");
                assert_eq!(key_id(sealed), newest, "the new value uses the new key");
                new += 1;
            } else {
                assert_ne!(key_id(sealed), newest, "an old value keeps its key");
                old += 1;
            }
        }
    }
    assert_eq!(new, 1);
    assert!(old > 50, "{old} sellers from before the rotation");
}

#[test]
fn a_warn_rule_on_a_pii_column_is_counted_at_the_edge_and_keeps_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let idcards = idcards_with(
        dir.path(),
        "customers.yaml",
        "{ column: customer_zip_code_prefix, matches: '^[0-9]{5}$', action: quarantine }",
        "{ column: customer_zip_code_prefix, matches: '^[0-9]{5}$', action: warn }",
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("olist_customers_dataset.csv"),
        "customer_id,customer_unique_id,customer_zip_code_prefix,customer_city,customer_state\n\
         w1,p1,01001,sao paulo,SP\n\
         w2,p2,ABCDE,sao paulo,SP\n",
    )
    .unwrap();
    let lake = dir.path().join("lake");
    let report = dir.path().join("report.json");
    let mut run = framework(&lake);
    run.arg("--idcards").arg(&idcards);
    run.args(["run", "--table", "customers", "--until", "silver", "--data"])
        .arg(&data)
        .arg("--report")
        .arg(&report);
    ok(run);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let customers = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "customers")
        .unwrap();
    assert_eq!(customers["warnings"], 1, "{customers}");
    assert_eq!(customers["rejected"], 0, "{customers}");
    assert_eq!(customers["silver"], 2, "{customers}");
}

/// The key ids of every encrypted string of `rows` (cells as `a | b | c`, nested values as
/// text): what a scan of a table's content finds.
fn sealed_key_ids(lake: &Path, layer: Layer, table: &str, column_sql: &str) -> Vec<u32> {
    let batches = batches(
        lake,
        layer,
        table,
        &format!("SELECT {column_sql} AS v FROM t"),
    );
    let mut ids = Vec::new();
    for batch in &batches {
        for text in strings(batch, 0).into_iter().flatten() {
            ids.push(key_id(&text));
        }
    }
    ids
}

#[test]
fn re_encrypt_after_a_rotation_puts_every_value_under_the_new_key_and_equality_holds_again() {
    let dir = tempfile::tempdir().unwrap();
    let keyset = dir.path().join("stage.keyset.json");
    let root = dir.path().join("root.key");
    let lake = dir.path().join("lake");
    let cmd = || staged(&lake, &keyset, &root);
    let step = |args: &[&str]| {
        let mut c = cmd();
        c.args(args);
        String::from_utf8_lossy(&ok(c).stdout).to_string()
    };
    step(&["keys", "new-root", "--out", root.to_str().unwrap()]);
    step(&["keys", "create"]);
    let data = sample().to_string_lossy().to_string();
    for table in ["sellers", "customers", "orders", "customer_profiles"] {
        step(&["run", "--table", table, "--data", &data]);
    }
    let open = || {
        let file = framework::pii::keyset::Keyset::load(&keyset)
            .unwrap()
            .unwrap();
        let roots = framework::pii::keyset::root_keys_from_file(&root).unwrap();
        (file.unlock(&keyset, &roots).unwrap(), file)
    };
    let (_, before) = open();
    let old = before.domains["location"].primary;
    let plain_before = |keys: &framework::pii::Keyring| {
        let rows = batches(
            &lake,
            Layer::Silver,
            "sellers",
            "SELECT seller_id, seller_zip_code_prefix FROM t ORDER BY seller_id",
        );
        let mut out = Vec::new();
        for batch in &rows {
            let (ids, zips) = (strings(batch, 0), strings(batch, 1));
            for r in 0..batch.num_rows() {
                let zip = keys.decrypt_any(zips[r].as_deref().unwrap()).unwrap();
                out.push(format!(
                    "{} {}",
                    ids[r].as_deref().unwrap(),
                    String::from_utf8(zip).unwrap()
                ));
            }
        }
        out
    };
    let (keys, _) = open();
    let sellers_before = plain_before(&keys);

    step(&["keys", "rotate", "--domain", "location"]);
    step(&["keys", "rotate", "--domain", "contact"]);
    let said = step(&["keys", "re-encrypt"]);
    assert!(said.contains("silver/sellers: 3095 value(s)"), "{said}");
    assert!(said.contains("bronze/customers:"), "{said}");
    assert!(said.contains("silver/customers_unique:"), "{said}");
    let (keys, after) = open();
    let new = after.domains["location"].primary;
    assert_ne!(new, old);
    // Every location value under the new key: own columns, enriched copies, nested leaves,
    // in bronze and silver; contacts (randomized, nested in a list) too.
    for (layer, table, column) in [
        (Layer::Silver, "sellers", "seller_zip_code_prefix"),
        (Layer::Bronze, "sellers", "seller_zip_code_prefix"),
        (Layer::Silver, "customers", "customer_city"),
        (
            Layer::Silver,
            "customers_unique",
            "customer_zip_code_prefix",
        ),
        (Layer::Silver, "orders", "customer_city"),
        (
            Layer::Silver,
            "customer_profiles",
            "get_field(address, 'zip_code_prefix')",
        ),
        (
            Layer::Bronze,
            "customer_profiles",
            "get_field(address, 'city')",
        ),
    ] {
        let ids = sealed_key_ids(&lake, layer, table, column);
        assert!(
            ids.len() > 1000,
            "{layer}/{table}.{column}: {} values",
            ids.len()
        );
        assert!(
            ids.iter().all(|id| *id == new),
            "{layer}/{table}.{column} keeps old key ids"
        );
    }
    let contacts = sealed_key_ids(
        &lake,
        Layer::Silver,
        "customer_profiles",
        "get_field(contacts[1], 'value')",
    );
    // Contacts are under their subjects' keys (`subject:`), which a rotation of the data key
    // that wraps them does not change: they keep the key id that named their subject.
    assert!(!contacts.is_empty());
    assert!(
        contacts
            .iter()
            .all(|id| *id == before.domains["contact"].primary)
    );
    // The plaintexts did not change.
    assert_eq!(plain_before(&keys), sellers_before);
    // A second pass has nothing to do, and commits nothing.
    let version = |table: &str| {
        let path = lake.join("silver").join(table).join("_delta_log");
        std::fs::read_dir(path).unwrap().count()
    };
    let commits = version("sellers");
    let again = step(&["keys", "re-encrypt", "--table", "sellers"]);
    assert!(again.contains("re-encrypted 0 value(s)"), "{again}");
    assert_eq!(version("sellers"), commits);
    // Equality holds across the rotation again: the same sellers re-sent (encrypted under the
    // new key at the edge) match the stored rows, so MERGE rewrites none of them.
    let offsets_before = query(
        &lake,
        Layer::Silver,
        "sellers",
        "SELECT max(_offset) AS m FROM t",
    );
    step(&["run", "--table", "sellers", "--resend", "--data", &data]);
    assert_eq!(
        query(
            &lake,
            Layer::Silver,
            "sellers",
            "SELECT max(_offset) AS m FROM t"
        ),
        offsets_before,
        "re-sent unchanged sellers were rewritten: their ciphertexts differ from the stored ones"
    );
    assert_eq!(count(&lake, Layer::Silver, "sellers"), 3095);
}

/// Crypto-shredding: `contacts[].value` is encrypted under its customer's own key
/// (`subject: customer_unique_id`); `framework keys forget` erases it, after which that
/// customer's contacts no longer decrypt anywhere (silver and bronze, old Delta versions too)
/// and `pii_decrypt` gives null for them, while every other customer's still decrypt.
#[test]
fn a_forgotten_subject_s_values_no_longer_decrypt_anywhere_and_the_others_still_do() {
    let dir = tempfile::tempdir().unwrap();
    let keyset = dir.path().join("stage.keyset.json");
    let root = dir.path().join("root.key");
    let lake = dir.path().join("lake");
    let step = |args: &[&str]| {
        let mut c = staged(&lake, &keyset, &root);
        c.args(args);
        String::from_utf8_lossy(&ok(c).stdout).to_string()
    };
    step(&["keys", "new-root", "--out", root.to_str().unwrap()]);
    step(&["keys", "create"]);
    let data = sample().to_string_lossy().to_string();
    // A producer killed right after its messages reached the topic: they hold subject keys
    // made in that process, which must have reached the key file before them.
    let mut killed = staged(&lake, &keyset, &root);
    killed
        .args([
            "produce",
            "--table",
            "customer_profiles",
            "--no-delay",
            "--data",
            &data,
        ])
        .env("FRAMEWORK_CRASH_AT", "produce-after-send");
    let out = output_within(killed, std::time::Duration::from_secs(120));
    assert!(!out.status.success(), "the producer was not killed");
    step(&[
        "run",
        "--table",
        "customer_profiles",
        "--data",
        &data,
        "--resend",
    ]);
    // The source's contacts, per customer.
    let mut source: HashMap<String, Vec<String>> = HashMap::new();
    let text = std::fs::read_to_string(sample().join("customer_profiles.jsonl")).unwrap();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = record["customer_unique_id"].as_str().unwrap().to_owned();
        for contact in record["contacts"].as_array().into_iter().flatten() {
            if let Some(value) = contact["value"].as_str() {
                source.entry(id.clone()).or_default().push(value.to_owned());
            }
        }
    }
    let open = || {
        let file = framework::pii::keyset::Keyset::load(&keyset)
            .unwrap()
            .unwrap();
        let roots = framework::pii::keyset::root_keys_from_file(&root).unwrap();
        file.unlock(&keyset, &roots).unwrap()
    };
    // (customer, sealed contact value) of every contact in a layer.
    let sealed = |layer: Layer| -> Vec<(String, String)> {
        let rows = batches(
            &lake,
            layer,
            "customer_profiles",
            "SELECT customer_unique_id, get_field(c, 'value') FROM (SELECT customer_unique_id, \
             unnest(contacts) AS c FROM t)",
        );
        let mut out = Vec::new();
        for batch in &rows {
            let (ids, values) = (strings(batch, 0), strings(batch, 1));
            for r in 0..batch.num_rows() {
                if let Some(value) = &values[r] {
                    out.push((ids[r].clone().unwrap(), value.clone()));
                }
            }
        }
        out
    };
    let keys = open();
    let silver = sealed(Layer::Silver);
    assert!(silver.len() > 1000, "{} contacts", silver.len());
    for (id, value) in &silver {
        let plain = String::from_utf8(keys.decrypt_any(value).unwrap()).unwrap();
        assert!(source[id].contains(&plain), "{id}: {plain}");
    }
    let (gone, kept) = (silver[0].0.clone(), silver.last().unwrap().0.clone());
    assert_ne!(gone, kept);

    let said = step(&["keys", "forget", "--domain", "contact", "--subject", &gone]);
    assert!(said.contains("erased 1 subject key"), "{said}");
    assert!(!said.contains(&gone), "the subject is not echoed: {said}");
    let keys = open();
    let mut forgotten = 0;
    for layer in [Layer::Silver, Layer::Bronze] {
        for (id, value) in sealed(layer) {
            if id == gone {
                assert!(keys.decrypt_any(&value).is_none(), "{layer}: {id}");
                assert!(keys.is_forgotten(&value));
                forgotten += 1;
            } else {
                let plain = String::from_utf8(keys.decrypt_any(&value).unwrap()).unwrap();
                assert!(source[&id].contains(&plain), "{layer} {id}: {plain}");
            }
        }
    }
    // Silver once, bronze at least once (the killed producer's messages are there too).
    assert!(forgotten >= 2 * source[&gone].len(), "{forgotten}");
    // pii_decrypt in SQL: null for the forgotten subject, the plaintext for another.
    let pick = |who: &str| silver.iter().find(|(id, _)| id == who).unwrap().1.clone();
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    framework::pii::udf::register(&ctx, &std::sync::Arc::new(keys));
    let sql = format!(
        "SELECT pii_decrypt('{}') AS gone, pii_decrypt('{}') AS kept",
        pick(&gone),
        pick(&kept)
    );
    let out = runtime().block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() });
    let row = batch_rows(&out);
    assert_eq!(row.len(), 1);
    let kept_plain = String::from_utf8(open().decrypt_any(&pick(&kept)).unwrap()).unwrap();
    assert_eq!(row[0], format!("null | {kept_plain}"), "{row:?}");
    // Forgetting again finds nothing.
    let again = step(&["keys", "forget", "--domain", "contact", "--subject", &gone]);
    assert!(again.contains("no key for that subject"), "{again}");
}
