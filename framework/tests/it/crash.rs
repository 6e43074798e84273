//! Crash safety: SIGKILL the bronze consumer at random moments, abort silver and gold at each
//! commit boundary (`FRAMEWORK_CRASH_AT`) and SIGKILL them at random moments; after each restart
//! every table equals a run without crashes: nothing lost, nothing twice.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use framework::idcard::ColumnType;
use framework::lake::Layer;

use crate::common::*;

#[test]
fn bronze_survives_sigkill_at_random_moments_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = generate_data(&lake, dir.path(), "0.05");
    let produce = || {
        let mut produce = framework(&lake);
        produce
            .args(["produce", "--table", "geolocation", "--no-delay", "--data"])
            .arg(&data);
        ok(produce);
    };
    produce();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut kills = 0;
    let mut partial = std::collections::BTreeSet::new();
    let started = Instant::now();
    while kills < 12 && started.elapsed() < Duration::from_secs(600) {
        let mut consume = consume_bronze(&lake);
        consume.args(["--batch-size", "400"]);
        let mut child = consume.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success());
                produce(); // finished before the kill: give it more to do
            }
            None => {
                child.kill().unwrap(); // SIGKILL on Unix
                wait_within(&mut child, TIMEOUT).expect("a killed process ends");
                kills += 1;
                let (rows, messages) = (
                    count(&lake, Layer::Bronze, "geolocation"),
                    topic_messages(&lake, "raw_geolocation", 3),
                );
                if rows > 0 && rows < messages {
                    partial.insert(rows);
                }
            }
        }
        // After every crash: no message twice.
        let dupes = query(
            &lake,
            Layer::Bronze,
            "geolocation",
            "SELECT count(*) - count(DISTINCT (_partition, _offset)) AS dupes FROM t",
        );
        assert!(
            dupes.contains("| 0 "),
            "duplicates after kill {kills}:\n{dupes}"
        );
    }
    assert!(
        partial.len() >= 5,
        "too few kills caught bronze half-way: {partial:?}"
    );
    let messages = topic_messages(&lake, "raw_geolocation", 3);
    assert!(kills >= 10, "only {kills} kills landed mid-run");
    let finish = consume_bronze(&lake);
    ok(finish);
    assert_eq!(count(&lake, Layer::Bronze, "geolocation"), messages);
    let distinct = query(
        &lake,
        Layer::Bronze,
        "geolocation",
        "SELECT count(DISTINCT (_partition, _offset)) AS n FROM t",
    );
    assert!(distinct.contains(&format!("| {messages} ")), "{distinct}");
}

/// `framework run` of geolocation's bronze stage over what is already on the topic.
fn consume_bronze(lake: &std::path::Path) -> std::process::Command {
    let mut cmd = framework(lake);
    cmd.args([
        "run",
        "--table",
        "geolocation",
        "--no-produce",
        "--until",
        "bronze",
    ]);
    cmd
}

/// Copies the sample into `dir` with two orders that the orders idcard quarantines (an unknown
/// status; no purchase time), neither delivered, so the gold reference is unchanged by them.
fn sample_with_quarantined_orders(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(sample()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "csv" || e == "jsonl") {
            std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
        }
    }
    let orders = data.join("olist_orders_dataset.csv");
    let mut text = std::fs::read_to_string(&orders).unwrap();
    text.push_str("f0000000000000000000000000000001,c1,teleported,2017-02-27 11:33:35,,,,2017-03-20 00:00:00\n");
    text.push_str("f0000000000000000000000000000002,c2,shipped,,,,,2017-03-20 00:00:00\n");
    std::fs::write(&orders, text).unwrap();
    data
}

/// A lake whose bronze holds the whole of `data` (produce and bronze done, nothing after).
fn bronze_only_lake(dir: &Path, data: &Path) -> PathBuf {
    let lake = dir.join("bronze-only");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--until", "bronze", "--data"])
        .arg(data);
    ok(run);
    lake
}

/// `run --all` over what bronze holds (no produce: the topics are the same for every lake).
fn finish(lake: &Path) -> Command {
    let mut cmd = framework(lake);
    cmd.args(["run", "--all", "--no-produce"]);
    cmd
}

/// Every silver, quarantine and gold table of a lake, each as sorted rows (quarantine without
/// its `_quarantined_at` time).
fn state(lake: &Path) -> BTreeMap<String, Vec<String>> {
    let project = project();
    let mut out = BTreeMap::new();
    let mut silver: Vec<&str> = project.names();
    silver.push("customers_unique");
    for table in silver {
        out.insert(format!("silver/{table}"), rows(lake, Layer::Silver, table));
    }
    out.insert(
        "quarantine/orders".into(),
        batch_rows(&batches(
            lake,
            Layer::Quarantine,
            "orders",
            "SELECT * EXCLUDE (_quarantined_at) FROM t",
        )),
    );
    for model in GOLD_MODELS {
        out.insert(format!("gold/{model}"), rows(lake, Layer::Gold, model));
    }
    out
}

fn assert_same_state(
    got: &BTreeMap<String, Vec<String>>,
    want: &BTreeMap<String, Vec<String>>,
    after: &str,
) {
    for (table, rows) in want {
        let ours = &got[table];
        if ours != rows {
            let first = (0..ours.len().max(rows.len()))
                .find(|&i| ours.get(i) != rows.get(i))
                .unwrap_or(0);
            panic!(
                "{after}: {table} differs from a run without crashes ({} rows vs {}); first difference:\n got:  {:?}\n want: {:?}",
                ours.len(),
                rows.len(),
                ours.get(first),
                rows.get(first)
            );
        }
    }
}

/// The lake without crashes: the reference every crashed lake must end equal to. Checks it
/// against the independent computations first.
fn reference_state(dir: &Path, data: &Path, bronze: &Path) -> BTreeMap<String, Vec<String>> {
    let clean = dir.join("clean");
    copy_dir(bronze, &clean);
    ok(finish(&clean));
    let project = project();
    for table in project.names() {
        let t = project.table(table).unwrap();
        let mut want = keys_from_csv(data, &project, table);
        if table == "orders" {
            for bad in [
                "f0000000000000000000000000000001",
                "f0000000000000000000000000000002",
            ] {
                assert!(want.remove(bad), "{bad} in the CSV");
            }
        }
        let key = t
            .key()
            .iter()
            .map(|k| format!("CAST(\"{k}\" AS VARCHAR)"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let got: HashSet<String> = batch_rows(&batches(
            &clean,
            Layer::Silver,
            table,
            &format!("SELECT {key} FROM t"),
        ))
        .into_iter()
        .collect();
        if t.key()
            .iter()
            .any(|k| t.column(k).unwrap().data_type == ColumnType::Double)
        {
            // Doubles print differently in the CSV and in SQL: compare how many.
            assert_eq!(got.len(), want.len(), "silver {table}: keys vs the CSV's");
        } else {
            assert!(
                got == want,
                "silver {table}: keys differ from the CSV's distinct keys"
            );
        }
    }
    crate::gold::assert_gold_equals_reference(&clean, data);
    let state = state(&clean);
    assert_eq!(
        state["quarantine/orders"].len(),
        2,
        "the two bad orders, once each"
    );
    state
}

#[test]
fn a_crash_at_every_silver_and_gold_commit_boundary_neither_loses_nor_repeats_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_with_quarantined_orders(dir.path());
    let bronze = bronze_only_lake(dir.path(), &data);
    let want = reference_state(dir.path(), &data, &bronze);
    for point in [
        "silver-before-quarantine:orders",
        "silver-after-quarantine:orders",
        "silver-before-merge:orders",
        "silver-after-merge:orders",
        "silver-after-merge:customers",
        "silver-before-latest-by:customers",
        "silver-after-latest-by:customers",
        "silver-after-merge:geolocation",
        "gold-after:gold_daily_sales",
        "gold-after:gold_customer_rfm",
        "gold-after:gold_delivery_performance",
    ] {
        let lake = dir.path().join(point.replace(':', "-"));
        copy_dir(&bronze, &lake);
        let mut crashing = finish(&lake);
        crashing.env("FRAMEWORK_CRASH_AT", point);
        assert_crashed_at(&output(crashing), point);
        ok(finish(&lake));
        assert_same_state(&state(&lake), &want, &format!("a crash at {point}"));
        std::fs::remove_dir_all(&lake).unwrap();
    }
}

#[test]
fn sigkills_at_random_moments_of_silver_and_gold_neither_lose_nor_repeat_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_with_quarantined_orders(dir.path());
    let bronze = bronze_only_lake(dir.path(), &data);
    let want = reference_state(dir.path(), &data, &bronze);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    let started = Instant::now();
    let mut series = 0;
    while kills < 24 && started.elapsed() < Duration::from_secs(600) {
        series += 1;
        let lake = dir.path().join(format!("series-{series}"));
        copy_dir(&bronze, &lake);
        let mut landed = 0;
        // Kill runs over the same lake until one gets to its end by itself.
        loop {
            let stderr_path = dir.path().join(format!("series-{series}.stderr"));
            let mut child = finish(&lake)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
            match wait_within(&mut child, Duration::ZERO) {
                None => {
                    landed += 1; // killed mid-run
                    kills += 1;
                }
                Some(status) => {
                    assert!(
                        status.success(),
                        "a run after {landed} kills failed:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                    break;
                }
            }
            // Once the table has a commit: a kill can land between the creation of its log
            // folder and its first commit, which leaves no table.
            let quarantine = lake.join("quarantine/orders");
            if quarantine.join("_delta_log").exists() && !delta_commits(&quarantine).is_empty() {
                let dupes = query(
                    &lake,
                    Layer::Quarantine,
                    "orders",
                    "SELECT count(*) - count(DISTINCT (_partition, _offset)) AS dupes FROM t",
                );
                assert!(dupes.contains("| 0 "), "after kill {kills}:\n{dupes}");
            }
        }
        ok(finish(&lake));
        assert_same_state(
            &state(&lake),
            &want,
            &format!("{landed} SIGKILLs (series {series})"),
        );
        std::fs::remove_dir_all(&lake).unwrap();
    }
    assert!(kills >= 24, "only {kills} kills landed mid-run");
}

/// SIGKILLs at random moments of whole runs (`run --all` from the source files: produce,
/// bronze, silver, gold, checks), each run on the lake the killed ones left, until at least
/// eight kills landed and a run ends by itself: then every silver and gold table holds the rows
/// of a run without kills, and the quarantine holds each quarantined row. A producer killed
/// mid-file sends the file again at the next run (the topic holds its rows at least once, at
/// other offsets): silver keeps one row per key, while the quarantine records each message
/// that broke a rule, so a row sent twice may be there twice. Compared without the messages'
/// metadata (`_partition`, `_offset`, ..., which differ) and without randomized PII columns
/// (a fresh nonce per send).
#[test]
fn sigkills_at_random_moments_of_whole_runs_leave_the_tables_of_a_run_without_kills() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_with_quarantined_orders(dir.path());
    let run_all = |lake: &Path| {
        let mut cmd = framework(lake);
        cmd.args(["run", "--all", "--data"]).arg(&data);
        cmd
    };
    let clean = dir.path().join("clean");
    ok(run_all(&clean));
    let want = comparable_state(&clean);
    assert_eq!(want["quarantine/orders"].len(), 2, "the two bad orders");
    let lake = dir.path().join("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let (mut kills, mut runs) = (0, 0);
    let started = Instant::now();
    loop {
        runs += 1;
        let stderr_path = dir.path().join(format!("run-{runs}.stderr"));
        let mut run = run_all(&lake);
        // The first runs die while they produce: each append to a topic is followed by a
        // pause (a file is on the topic before it is recorded as delivered), so that a kill at
        // a random moment lands there however loaded the machine is. The later ones die
        // anywhere, at full speed.
        let moment = match runs {
            ..=6 => {
                run.env("FRAMEWORK_PAUSE_AT", "produce-after-send=150");
                rng.random_range(40..1500)
            }
            _ => rng.random_range(50..3000),
        };
        let mut child = run
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        match wait_within(&mut child, Duration::from_millis(moment)) {
            None => kills += 1,
            Some(status) => {
                assert!(
                    status.success(),
                    "run {runs}, after {kills} kills, failed:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
                if kills >= 8 {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {kills} kills landed in {runs} runs"
        );
    }
    let got = comparable_state(&lake);
    for (table, rows) in &want {
        let ours = &got[table];
        if table == "quarantine/orders" {
            let distinct: std::collections::BTreeSet<&String> = ours.iter().collect();
            let wanted: std::collections::BTreeSet<&String> = rows.iter().collect();
            assert_eq!(distinct, wanted, "after {kills} kills: {table}");
        } else {
            assert!(
                ours == rows,
                "after {kills} kills: {table} differs from a run without kills ({} rows vs {}); first difference: {:?}",
                ours.len(),
                rows.len(),
                ours.iter().zip(rows).find(|(a, b)| a != b)
            );
        }
    }
    // Some kill landed after a file reached the topic and before it was recorded as
    // delivered: the next run sent it again.
    let project = project();
    let sent_again: Vec<&str> = project
        .names()
        .into_iter()
        .filter(|t| count(&lake, Layer::Bronze, t) > count(&clean, Layer::Bronze, t))
        .collect();
    assert!(
        !sent_again.is_empty(),
        "no kill of {kills} landed while a file was produced"
    );
}

/// [`state`]'s tables without the columns that differ between two runs of the same files:
/// message metadata (names starting with `_`) and randomized PII.
fn comparable_state(lake: &Path) -> BTreeMap<String, Vec<String>> {
    let project = project();
    let mut out = BTreeMap::new();
    let select = |layer: Layer, table: &str, project_table: Option<&framework::idcard::Table>| {
        let randomized: Vec<String> = project_table
            .map(|t| {
                t.config
                    .pii
                    .iter()
                    .filter(|p| p.mode == framework::pii::PiiMode::Randomized)
                    .map(|p| p.column.split(['.', '[']).next().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let columns = batches(lake, layer, table, "SELECT * FROM t LIMIT 1")
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| panic!("{layer:?}/{table} is empty"));
        let kept: Vec<String> = columns
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|name| !name.starts_with('_') && !randomized.contains(name))
            .map(|name| format!("\"{name}\""))
            .collect();
        batch_rows(&batches(
            lake,
            layer,
            table,
            &format!("SELECT {} FROM t", kept.join(", ")),
        ))
    };
    for table in project.names() {
        let rows = select(Layer::Silver, table, project.table(table));
        out.insert(format!("silver/{table}"), rows);
    }
    let unique = select(Layer::Silver, "customers_unique", None);
    out.insert("silver/customers_unique".into(), unique);
    let quarantined = select(Layer::Quarantine, "orders", project.table("orders"));
    out.insert("quarantine/orders".into(), quarantined);
    for model in GOLD_MODELS {
        out.insert(format!("gold/{model}"), select(Layer::Gold, model, None));
    }
    out
}
