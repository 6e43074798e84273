//! Crash safety: SIGKILL the bronze consumer at random moments; after each restart bronze holds
//! every message exactly once.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use framework::lake::Layer;

use crate::common::*;

#[test]
fn bronze_survives_sigkill_at_random_moments_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let data = dir.path().join("data");
    let mut generate = framework(&lake);
    generate
        .args(["generate-data", "--scale", "0.05", "--out"])
        .arg(&data);
    ok(generate);
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
                child.wait().unwrap();
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
