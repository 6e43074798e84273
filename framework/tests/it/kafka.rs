//! The Kafka bus against a real Kafka-protocol broker (Tansu, started here on a free loopback
//! port): the sample goes through raw_* topics into bronze and silver exactly once.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framework::lake::Layer;

use crate::common::*;

/// A Tansu broker with in-memory storage, stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let tansu = std::env::var("FRAMEWORK_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{tansu}` ({e}): scripts/test installs it with `cargo install tansu --locked --features dynostore,libsql`")
            });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_sample_goes_through_a_real_broker_into_bronze_and_silver_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("tansu.log"));
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
    let out = run.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("raw_orders") && err.contains("--bus"), "{err}");
    let mut bad = framework(&dir.path().join("lake"));
    bad.args(["--bus", "kafka:/oops", "validate"]);
    let out = bad.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a bus"));
}
