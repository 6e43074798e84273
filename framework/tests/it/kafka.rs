//! The Kafka bus against a real Kafka-protocol broker (Tansu, started here on a free loopback
//! port): the sample goes through raw_* topics into bronze and silver exactly once.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use framework::lake::Layer;

use crate::common::*;

/// A Tansu broker on a free loopback port, stopped when dropped. Its topics live in memory, or
/// with [`Broker::persistent`] in a SQLite file that survives a restart.
pub(crate) struct Broker {
    child: Option<Child>,
    port: u16,
    storage: String,
    dir: PathBuf,
}

impl Broker {
    pub(crate) fn start(dir: &Path) -> Self {
        Self::launch(dir, "memory://tansu/")
    }

    fn persistent(dir: &Path) -> Self {
        Self::launch(dir, "sqlite://tansu.db")
    }

    fn launch(dir: &Path, storage: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Self {
            child: None,
            port,
            storage: storage.to_owned(),
            dir: dir.to_owned(),
        };
        broker.restart();
        broker
    }

    /// Starts the broker (again) on the same port and storage.
    fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let tansu = std::env::var("FRAMEWORK_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{tansu}` ({e}): scripts/test installs it with `cargo install tansu --locked --features dynostore,libsql`")
            });
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the broker.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// The URL with a short consumer-group session, so that the group notices a killed member
    /// within seconds (librdkafka settings ride on the URL's query).
    pub(crate) fn fast_group_url(&self) -> String {
        format!(
            "{}?session.timeout.ms=2000&heartbeat.interval.ms=500",
            self.url()
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn the_sample_goes_through_a_real_broker_into_bronze_and_silver_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let lake = dir.path().join("lake");
    let report = dir.path().join("report.json");
    let mut run = framework(&lake);
    run.args([
        "--bus",
        &broker.url(),
        "run",
        "--all",
        "--until",
        "silver",
        "--data",
    ])
    .arg(sample())
    .arg("--report")
    .arg(&report);
    ok(run);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let project = project();
    for t in json["tables"].as_array().unwrap() {
        let table = t["table"].as_str().unwrap();
        let produced = t["produced"].as_u64().unwrap();
        assert!(produced > 0, "{table}: nothing produced");
        assert_eq!(
            t["consumed"].as_u64().unwrap(),
            produced,
            "{table}: consumed vs produced"
        );
        assert_eq!(
            count(&lake, Layer::Bronze, table),
            produced,
            "bronze {table}: every message once"
        );
        assert_eq!(count(&lake, Layer::Reject, table), 0, "reject {table}");
        assert_eq!(
            count(&lake, Layer::Silver, table),
            distinct_keys_from_csv(&sample(), &project, table),
            "silver {table} vs distinct CSV keys"
        );
    }
    // Offsets and partitions as the producer chose them: every (partition, offset) once.
    let dupes = query(
        &lake,
        Layer::Bronze,
        "orders",
        "SELECT count(*) AS n FROM (SELECT _partition, _offset FROM t GROUP BY 1, 2 HAVING count(*) > 1)",
    );
    assert!(dupes.contains("| 0 "), "{dupes}");

    // Consuming again from the same topics adds nothing: the offsets live in the Delta log.
    let before = count(&lake, Layer::Bronze, "order_items");
    let mut again = framework(&lake);
    again.args([
        "--bus",
        &broker.url(),
        "run",
        "--all",
        "--until",
        "bronze",
        "--no-produce",
    ]);
    ok(again);
    assert_eq!(count(&lake, Layer::Bronze, "order_items"), before);
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = framework(&dir.path().join("lake"));
    run.args([
        "--bus",
        &format!("kafka://127.0.0.1:{port}"),
        "run",
        "--table",
        "orders",
        "--data",
    ])
    .arg(sample());
    let out = output(run);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("raw_orders") && err.contains("--bus"), "{err}");
    let mut bad = framework(&dir.path().join("lake"));
    bad.args(["--bus", "kafka:/oops", "validate"]);
    let out = output(bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a bus"));
}

/// Produces `table` from `data` to the broker; returns how many messages were sent.
fn produce(lake: &Path, bus: &str, table: &str, data: &Path) -> u64 {
    let mut produce = framework(lake);
    produce
        .args([
            "--bus",
            bus,
            "produce",
            "--table",
            table,
            "--no-delay",
            "--data",
        ])
        .arg(data);
    let out = ok(produce);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no message count in {stdout:?}"))
}

/// `framework run` of `table`'s bronze stage over what is already on the topic.
fn consume(lake: &Path, bus: &str, table: &str) -> Command {
    let mut cmd = framework(lake);
    cmd.args([
        "--bus",
        bus,
        "run",
        "--table",
        table,
        "--no-produce",
        "--until",
        "bronze",
    ]);
    cmd
}

/// Bronze holds no (partition, offset) twice.
fn assert_no_duplicates(lake: &Path, table: &str, context: &str) {
    let dupes = query(
        lake,
        Layer::Bronze,
        table,
        "SELECT count(*) - count(DISTINCT (_partition, _offset)) AS dupes FROM t",
    );
    assert!(dupes.contains("| 0 "), "duplicates {context}:\n{dupes}");
}

/// Bronze holds each of the topic's `messages` messages exactly once.
fn assert_exactly_once(lake: &Path, table: &str, messages: u64) {
    assert_eq!(
        count(lake, Layer::Bronze, table),
        messages,
        "bronze {table} rows"
    );
    assert_no_duplicates(lake, table, "at the end");
}

#[test]
fn bronze_on_kafka_survives_sigkill_of_its_consumer_ten_times() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let bus = broker.fast_group_url();
    let lake = dir.path().join("lake");
    let data = generate_data(&lake, dir.path(), "0.05");
    let mut messages = produce(&lake, &bus, "geolocation", &data);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut kills, mut partial) = (0, BTreeSet::new());
    let started = Instant::now();
    while kills < 10 && started.elapsed() < Duration::from_secs(600) {
        let mut consumer = consume(&lake, &bus, "geolocation");
        consumer
            .args(["--batch-size", "400"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let before = count(&lake, Layer::Bronze, "geolocation");
        let mut child = consumer.spawn().unwrap();
        // Kill while it stores: once the group assigned it partitions and its first commit
        // landed, at a random moment of the batches that follow.
        let waiting = Instant::now();
        while child.try_wait().unwrap().is_none()
            && count(&lake, Layer::Bronze, "geolocation") == before
            && waiting.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1200)));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success());
                messages += produce(&lake, &bus, "geolocation", &data); // give it more to do
            }
            None => {
                child.kill().unwrap(); // SIGKILL on Unix
                wait_within(&mut child, TIMEOUT).expect("a killed process ends");
                kills += 1;
                let rows = count(&lake, Layer::Bronze, "geolocation");
                if rows > 0 && rows < messages {
                    partial.insert(rows);
                }
            }
        }
        assert_no_duplicates(&lake, "geolocation", &format!("after kill {kills}"));
    }
    assert!(kills >= 10, "only {kills} kills landed mid-run");
    assert!(
        partial.len() >= 5,
        "too few kills caught bronze half-way: {partial:?}"
    );
    // Tansu's high watermark lags, so "caught up" rests on a quiet spell and on the group having
    // dropped the member killed last (its session is 2 s): a run may stop before the end of the
    // topic, leaving the rest on it. Skipped messages would stay missing however often bronze
    // runs again, so rerunning until the count stops growing still catches any loss.
    std::thread::sleep(Duration::from_secs(3));
    let mut counts = vec![count(&lake, Layer::Bronze, "geolocation")];
    while counts.len() < 4 && counts.last() != Some(&messages) {
        let mut finish = consume(&lake, &bus, "geolocation");
        finish.args(["--idle-ms", "3000"]);
        ok(finish);
        counts.push(count(&lake, Layer::Bronze, "geolocation"));
    }
    assert_eq!(
        counts.last(),
        Some(&messages),
        "bronze rows after each final run: {counts:?}"
    );
    assert_exactly_once(&lake, "geolocation", messages);
}

#[test]
fn two_consumer_processes_split_a_three_partition_topic_and_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let bus = broker.url();
    let lake = dir.path().join("lake");
    // Both members join the group on an empty topic, then the messages arrive.
    let members: Vec<(Child, PathBuf, PathBuf)> = (0..2)
        .map(|i| {
            let (report, log) = (
                dir.path().join(format!("report{i}.json")),
                dir.path().join(format!("member{i}.log")),
            );
            let mut consumer = consume(&lake, &bus, "customers");
            consumer
                .args([
                    "--log",
                    "framework=info",
                    "--idle-ms",
                    "8000",
                    "--batch-size",
                    "300",
                ])
                .arg("--report")
                .arg(&report)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            (consumer.spawn().unwrap(), report, log)
        })
        .collect();
    let assignments = |log: &Path| -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("partitions assigned"))
            .map(|l| l.rsplit("partitions").next().unwrap().to_owned())
            .collect()
    };
    let started = Instant::now();
    while members
        .iter()
        .any(|(_, _, log)| assignments(log).is_empty())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "members not both assigned; their logs:\n{}",
            members
                .iter()
                .map(|(_, _, log)| std::fs::read_to_string(log).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let messages = produce(&lake, &bus, "customers", &sample());
    let mut consumed = Vec::new();
    let mut partitions = Vec::new();
    for (mut child, report, log) in members {
        assert!(
            wait_within(&mut child, TIMEOUT).is_some_and(|s| s.success()),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        consumed.push(json["tables"][0]["consumed"].as_u64().unwrap());
        partitions.push(assignments(&log).last().unwrap().clone());
    }
    // The split: each member stored the messages of its own partitions, together all of them.
    assert!(
        consumed.iter().all(|&n| n > 0),
        "split {consumed:?} over {partitions:?}"
    );
    assert_eq!(consumed.iter().sum::<u64>(), messages, "split {consumed:?}");
    assert_ne!(partitions[0], partitions[1]);
    assert_exactly_once(&lake, "customers", messages);
}

#[test]
fn a_broker_stopped_mid_run_fails_the_run_clearly_and_a_rerun_stores_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::persistent(dir.path());
    let bus = broker.fast_group_url();
    let lake = dir.path().join("lake");
    let data = generate_data(&lake, dir.path(), "0.05");
    let messages = produce(&lake, &bus, "geolocation", &data);

    let mut consumer = consume(&lake, &bus, "geolocation");
    consumer
        .args(["--batch-size", "400"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = consumer.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    broker.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run went on without a broker");
    assert!(
        err.contains("raw_geolocation") && err.contains("hint"),
        "unclear error: {err}"
    );
    let stored = count(&lake, Layer::Bronze, "geolocation");
    assert!(stored < messages, "the broker stopped too late to matter");
    assert_no_duplicates(&lake, "geolocation", "after the broker stopped");

    broker.restart();
    std::thread::sleep(Duration::from_secs(3)); // the failed member's session ends
    let mut rerun = consume(&lake, &bus, "geolocation");
    rerun.args(["--idle-ms", "3000"]);
    ok(rerun);
    assert_exactly_once(&lake, "geolocation", messages);
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait(); // SIGKILLed: returns at once
    }
}

#[test]
fn a_member_that_holds_partitions_and_stores_nothing_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let bus = broker.fast_group_url();
    let lake = dir.path().join("lake");
    let messages = produce(&lake, &bus, "orders", &sample());
    // The first member takes the partitions, fetches, then hangs before it stores: its client
    // still heartbeats, so the group neither drops it nor hands its partitions on.
    let stuck_log = dir.path().join("stuck.log");
    let mut stuck = consume(&lake, &bus, "orders");
    stuck
        .env("FRAMEWORK_STALL_AT", "bronze-before-store")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stuck_log).unwrap());
    let stuck = KillOnDrop(stuck.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&stuck_log)
        .unwrap()
        .contains("stall point")
    {
        assert!(Instant::now() < deadline, "the first member never fetched");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second run finishes the job: it reads the partitions no one stores, outside the group.
    let started = Instant::now();
    let out = output_within(consume(&lake, &bus, "orders"), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    drop(stuck);
    assert!(out.status.success(), "the second run failed: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the take-over took {:?}",
        started.elapsed()
    );
    assert_exactly_once(&lake, "orders", messages);
}

#[test]
fn two_runs_racing_through_kafka_end_with_the_tables_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let bus = broker.fast_group_url();
    let lake = dir.path().join("lake");
    let messages = produce(&lake, &bus, "orders", &sample());
    // Two whole runs (bronze in one consumer group, then silver under the table's lease) at once.
    let mut runs: Vec<(Child, PathBuf)> = (0..2)
        .map(|i| {
            let log = dir.path().join(format!("run{i}.log"));
            let mut run = consume(&lake, &bus, "orders");
            run.args(["--until", "silver"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            (run.spawn().unwrap(), log)
        })
        .collect();
    for (child, log) in &mut runs {
        assert!(
            wait_within(child, TIMEOUT).is_some_and(|s| s.success()),
            "{}",
            std::fs::read_to_string(&*log).unwrap()
        );
    }
    assert_exactly_once(&lake, "orders", messages);
    assert_eq!(
        count(&lake, Layer::Silver, "orders"),
        distinct_keys_from_csv(&sample(), &project(), "orders"),
        "silver orders: one row per key of the CSV"
    );
}

/// A group member that the group takes a partition from and gives it back (a second member
/// joins, then leaves) resumes past what it had handed out, not at the start offsets the
/// caller's table records (here always 0, as when bronze has not yet committed what it took):
/// else, within one poll, bronze would store both copies of the messages handed out twice.
#[test]
fn a_member_given_its_partition_back_resumes_past_what_it_handed_out() {
    use framework::bus::{Batch, KafkaBus, StartOffsets};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    // A short session: the group settles within seconds of a member's coming and going.
    let settings = [
        ("session.timeout.ms", "2000"),
        ("heartbeat.interval.ms", "500"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let kafka = KafkaBus::new(broker.url().trim_start_matches("kafka://"), settings);
    kafka.ensure_topic("rebalanced", 1).unwrap();
    let mut batch = Batch::default();
    for i in 0..300 {
        batch.push(format!("k{i}").as_bytes(), b"{}", 0);
    }
    kafka.send("rebalanced", &batch).unwrap();
    let from_zero = || -> StartOffsets {
        Box::new(|partitions: &[u32]| Ok(partitions.iter().map(|&p| (p, 0)).collect()))
    };
    let a = kafka.join("rebalanced", "g", from_zero()).unwrap();
    let mut taken: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken.len() < 20 {
        assert!(Instant::now() < deadline, "no messages: {taken:?}");
        let polled = a
            .poll(10, Duration::from_millis(100), Duration::ZERO)
            .unwrap();
        taken.extend(polled.iter().map(|m| m.offset));
    }
    let slow_poll = |taken: &mut Vec<u64>| {
        let polled = a
            .poll(1, Duration::from_millis(50), Duration::ZERO)
            .unwrap();
        taken.extend(polled.iter().map(|m| m.offset));
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::scope(|s| {
        let second = s.spawn(|| {
            let b = kafka.join("rebalanced", "g", from_zero()).unwrap();
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until {
                b.poll(1, Duration::from_millis(100), Duration::ZERO)
                    .unwrap();
            }
            drop(b);
        });
        while !second.is_finished() {
            slow_poll(&mut taken);
        }
        second.join().unwrap();
    });
    // Back with `a` (alone in the group): read on until it has seen every offset. The
    // end-of-partition check makes the reads bronze makes when a fetch comes back empty (a
    // Tansu fetch from the middle of a record batch answers with the next batch).
    let ends = a.ends(&[0]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while taken.iter().collect::<BTreeSet<_>>().len() < 300 {
        a.caught_up(&ends).unwrap();
        assert!(
            Instant::now() < deadline,
            "not every offset (assigned {:?}): {taken:?}",
            a.assigned()
        );
        let polled = a
            .poll(100, Duration::from_millis(100), Duration::ZERO)
            .unwrap();
        taken.extend(polled.iter().map(|m| m.offset));
    }
    let mut once = taken.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once, (0..300).collect::<Vec<u64>>(), "taken: {taken:?}");
    assert_eq!(taken.len(), 300, "handed out twice: {taken:?}");
}
