//! The lake on an S3-compatible object store: s3s-fs (an S3 server on a folder, installed with
//! cargo; FRAMEWORK_TEST_S3FS names the binary) started on a free loopback port, the topics on
//! Tansu. The objects s3s-fs stores are files under its folder, so the Delta tables the run wrote
//! over the S3 protocol are read back independently from there.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framework::lake::Layer;

use crate::common::*;
use crate::kafka::Broker;

const ACCESS_KEY: &str = "lakehouse-test";
const SECRET_KEY: &str = "lakehouse-test-secret";

/// An s3s-fs server with a `lakehouse` bucket, stopped when dropped.
struct ObjectStore {
    child: Child,
    port: u16,
}

impl ObjectStore {
    fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("lakehouse")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var("FRAMEWORK_TEST_S3FS").unwrap_or_else(|_| {
            panic!(
                "FRAMEWORK_TEST_S3FS is not set: run the tests with scripts/test, which installs \
                 s3s-fs with cargo and sets it"
            )
        });
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// The framework's settings for this store, as a user would export them.
    fn configure(&self, cmd: &mut Command) {
        cmd.env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", self.port),
        )
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false");
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `framework` with the repo's folders, the lake at s3://lakehouse/olist and the topics on `broker`.
fn framework_on(store: &ObjectStore, broker: &Broker) -> Command {
    let mut cmd = framework(Path::new("s3://lakehouse/olist"));
    cmd.args(["--bus", &broker.url()]);
    store.configure(&mut cmd);
    cmd
}

#[test]
fn the_whole_lake_lives_on_an_s3_compatible_store_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::start(&dir.path().join("s3"));
    let broker = Broker::start(dir.path());
    let run = || framework_on(&store, &broker);
    let report = dir.path().join("report.json");
    let mut all = run();
    all.args(["run", "--all", "--data"])
        .arg(sample())
        .arg("--report")
        .arg(&report);
    ok(all);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let produced: std::collections::BTreeMap<String, u64> = json["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_owned(),
                t["produced"].as_u64().unwrap(),
            )
        })
        .collect();
    // Running again finds nothing new: offsets and MERGE keys are read back from the store.
    let mut again = run();
    again
        .args(["run", "--all", "--no-produce", "--data"])
        .arg(sample());
    ok(again);
    let mut test = run();
    test.arg("test");
    let out = ok(test);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("s3://lakehouse/olist/quality/results"),
        "results are stored on the object store"
    );

    // What the store holds, read from its folder: real Delta tables, nothing lost or doubled.
    let on_disk = dir.path().join("s3/lakehouse/olist");
    let project = project();
    for table in project.names() {
        assert!(produced[table] > 0, "{table}: nothing produced");
        assert_eq!(
            count(&on_disk, Layer::Bronze, table),
            produced[table],
            "bronze {table}: every message once"
        );
        assert_eq!(count(&on_disk, Layer::Reject, table), 0, "reject {table}");
        assert_eq!(
            count(&on_disk, Layer::Silver, table),
            distinct_keys_from_csv(&sample(), &project, table),
            "silver {table} vs distinct CSV keys"
        );
    }
    for model in GOLD_MODELS {
        assert!(
            count(&on_disk, Layer::Gold, model) > 0,
            "gold {model} on the store"
        );
    }
    assert!(count(&on_disk, Layer::Quality, "results") > 0);
}

#[test]
fn a_lake_on_an_object_store_with_the_embedded_log_is_a_clear_error() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framework"));
    cmd.args(["--lake", "s3://lakehouse/olist", "run", "--all"]);
    let out = output(cmd);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("embedded topic log needs a local lake"),
        "{stderr}"
    );
    assert!(stderr.contains("--bus kafka://"), "{stderr}");
}
