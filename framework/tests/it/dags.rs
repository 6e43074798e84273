//! The generated Airflow DAGs, imported and run by a real Airflow 3 (the venv scripts/test
//! installs; FRAMEWORK_TEST_AIRFLOW names its bin folder). Airflow parses the files with its own
//! DagBag (framework/tests/py/inspect_dags.py prints what it parsed) and `airflow dags test` runs
//! the pipeline with the built binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use framework::gold::Models;
use serde_json::Value;

use crate::common::{
    copy_dir, framework, idcards, ok, output, output_within, project, repo, sample,
};

/// A private Airflow: its home (SQLite metadata) and DAG folder under a test's temp dir.
struct Airflow {
    bin: PathBuf,
    home: PathBuf,
    dags: PathBuf,
}

impl Airflow {
    fn new(dir: &Path, dags: &Path) -> Self {
        let bin = PathBuf::from(std::env::var("FRAMEWORK_TEST_AIRFLOW").unwrap_or_else(|_| {
            panic!(
                "FRAMEWORK_TEST_AIRFLOW is not set: run the tests with scripts/test, which \
                 installs Airflow 3 into a venv and sets it to the venv's bin folder"
            )
        }));
        let home = dir.join("airflow-home");
        std::fs::create_dir_all(&home).unwrap();
        Self {
            bin,
            home,
            dags: dags.to_path_buf(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("AIRFLOW_HOME", &self.home)
            .env("AIRFLOW__CORE__DAGS_FOLDER", &self.dags)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("PYTHONWARNINGS", "ignore");
        cmd
    }

    /// What Airflow's DagBag made of the DAG folder.
    fn inspect(&self, lake: &Path) -> Value {
        let mut cmd = self.command("python");
        cmd.arg(repo().join("framework/tests/py/inspect_dags.py"))
            .arg(&self.dags)
            .env("FRAMEWORK_LAKE", lake);
        let out = output(cmd);
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "inspect_dags.py printed no JSON ({e}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            json["import_errors"],
            serde_json::json!({}),
            "Airflow could not import a generated DAG"
        );
        assert!(out.status.success(), "inspect_dags.py failed");
        json
    }

    /// The states of the tasks of the DAG's latest run, as `task_id -> (state, try_number)`.
    fn states(&self, dag: &str) -> BTreeMap<String, (String, i64)> {
        let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
run = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (sys.argv[2],)).fetchone()[0]
rows = db.execute("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", (sys.argv[2], run)).fetchall()
print(json.dumps({t: [s or "none", n] for t, s, n in rows}))
"#;
        let out = ok({
            let mut cmd = self.command("python");
            cmd.args(["-c", script])
                .arg(self.home.join("airflow.db"))
                .arg(dag);
            cmd
        });
        let json: BTreeMap<String, (String, i64)> =
            serde_json::from_slice(&out.stdout).expect("task states as JSON");
        json
    }
}

/// `framework generate-dags` into `out`, from `idcards`.
fn generate(idcards: &Path, out: &Path) {
    let mut cmd = framework(Path::new("unused-lake"));
    cmd.arg("--idcards")
        .arg(idcards)
        .args(["generate-dags", "--project"])
        .arg(repo().join("framework.yaml"))
        .arg("--out")
        .arg(out);
    ok(cmd);
}

fn dag<'a>(json: &'a Value, id: &str) -> &'a Value {
    json["dags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dag_id"] == id)
        .unwrap_or_else(|| panic!("Airflow parsed no DAG {id}"))
}

fn task<'a>(dag: &'a Value, id: &str) -> &'a Value {
    dag["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("{} has no task {id}", dag["dag_id"]))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

const STEPS: [&str; 6] = [
    "check_freshness",
    "bronze_to_silver",
    "gold_run",
    "gold_test",
    "validate",
    "vacuum",
];

#[test]
fn every_generated_dag_imports_in_airflow_with_the_graph_its_idcards_and_models_describe() {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    generate(&idcards(), &dags);
    let lake = dir.path().join("lake");
    let json = Airflow::new(dir.path(), &dags).inspect(&lake);
    let project = project();

    // One DAG per idcard, the pipeline and the gold DAG: nothing else, nothing missing.
    let ids: BTreeSet<String> = json["dags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dag_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: BTreeSet<String> = project
        .names()
        .iter()
        .map(|t| format!("olist_ingest_{t}"))
        .collect();
    expected.extend(["olist_pipeline".to_owned(), "olist_gold".to_owned()]);
    assert_eq!(ids, expected);

    // The pipeline: a chain of six steps, then exactly one of the two notifications.
    let pipeline = dag(&json, "olist_pipeline");
    assert_eq!(pipeline["timetable"]["summary"], "0 6 * * *");
    assert_eq!(pipeline["catchup"], false);
    for (i, step) in STEPS.iter().enumerate() {
        let t = task(pipeline, step);
        let upstream: Vec<&str> = STEPS[..i].iter().rev().take(1).copied().collect();
        assert_eq!(
            strings(&t["upstream_task_ids"]),
            upstream,
            "{step} upstream"
        );
        let mut downstream = vec!["notify_failure"];
        downstream.push(STEPS.get(i + 1).copied().unwrap_or("notify_success"));
        downstream.sort();
        assert_eq!(
            strings(&t["downstream_task_ids"]),
            downstream,
            "{step} downstream"
        );
        assert_eq!(t["trigger_rule"], "all_success", "{step}");
        assert_eq!(t["retries"], 2, "{step} retries");
        assert_eq!(t["retry_delay_s"], 300.0, "{step} retry delay");
        assert_eq!(t["has_on_failure_callback"], true, "{step} alerts");
        let command = t["bash_command"].as_str().unwrap();
        assert!(command.contains("FRAMEWORK_BIN:-framework"), "{command}");
    }
    assert!(
        task(pipeline, "check_freshness")["bash_command"]
            .as_str()
            .unwrap()
            .ends_with("test --suite freshness")
    );
    let success = task(pipeline, "notify_success");
    assert_eq!(success["trigger_rule"], "all_success");
    assert_eq!(strings(&success["upstream_task_ids"]), ["vacuum"]);
    let failure = task(pipeline, "notify_failure");
    assert_eq!(failure["trigger_rule"], "one_failed");
    let mut all_steps: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
    all_steps.sort();
    assert_eq!(strings(&failure["upstream_task_ids"]), all_steps);

    // Ingestion DAGs: schedule and retries from the idcard, Assets on the Delta tables.
    let lake = std::path::absolute(&lake).unwrap();
    for table in &project.tables {
        let name = table.name();
        let d = dag(&json, &format!("olist_ingest_{name}"));
        let schedule = table.config.schedule.as_ref();
        let cron = schedule
            .and_then(|s| s.cron.clone())
            .unwrap_or_else(|| "0 5 * * *".to_owned());
        assert_eq!(d["timetable"]["summary"], cron, "{name} schedule");
        let retries = schedule.and_then(|s| s.retries).unwrap_or(2);
        for (id, layer) in [("bronze", "bronze"), ("silver", "silver")] {
            let t = task(d, id);
            assert_eq!(t["retries"], retries, "{name}.{id} retries");
            assert_eq!(
                strings(&t["outlets"]),
                [format!("file://{}/{layer}/{name}", lake.display())],
                "{name}.{id} publishes its table"
            );
        }
        assert_eq!(strings(&task(d, "silver")["upstream_task_ids"]), ["bronze"]);
        assert!(
            task(d, "bronze")["bash_command"]
                .as_str()
                .unwrap()
                .ends_with(&format!("run --table {name} --until bronze"))
        );
    }

    // The gold DAG runs when every silver table the models read changed.
    let models = Models::load(&repo().join("models"), &project, Default::default())
        .unwrap_or_else(|d| panic!("{d}"));
    let inputs: BTreeSet<String> = models
        .models
        .iter()
        .flat_map(|m| &m.sources)
        .filter(|(layer, _)| layer == "silver")
        .map(|(_, t)| format!("file://{}/silver/{t}", lake.display()))
        .collect();
    assert!(inputs.len() >= 5, "the models read the silver tables");
    let gold = dag(&json, "olist_gold");
    let condition = &gold["asset_condition"]["all"];
    let scheduled: BTreeSet<String> = condition
        .as_array()
        .unwrap_or_else(|| panic!("olist_gold is not scheduled on all of its inputs: {gold}"))
        .iter()
        .map(|a| a["asset"]["uri"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(scheduled, inputs);
    let outlets: BTreeSet<String> = strings(&task(gold, "gold_run")["outlets"])
        .into_iter()
        .collect();
    for model in [
        "gold_daily_sales",
        "gold_customer_rfm",
        "gold_seller_performance",
    ] {
        assert!(
            outlets.contains(&format!("file://{}/gold/{model}", lake.display())),
            "{outlets:?}"
        );
    }
}

#[test]
fn a_new_idcard_file_gets_its_dag_with_no_code_change() {
    let dir = tempfile::tempdir().unwrap();
    let cards = dir.path().join("idcards");
    copy_dir(&idcards(), &cards);
    let dags = dir.path().join("dags");
    generate(&cards, &dags);
    let before: BTreeSet<_> = std::fs::read_dir(&dags)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    // A new table: the sellers idcard under another name, topic and schedule.
    let sellers = std::fs::read_to_string(cards.join("sellers.yaml")).unwrap();
    let archive = sellers
        .replace("table: sellers", "table: sellers_archive")
        .replace("name: raw_sellers", "name: raw_sellers_archive")
        .lines()
        .filter(|l| !l.starts_with("schedule:"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nschedule: { cron: \"30 2 * * 1\", retries: 4 }\n";
    std::fs::write(cards.join("sellers_archive.yaml"), archive).unwrap();
    generate(&cards, &dags);
    let after: BTreeSet<_> = std::fs::read_dir(&dags)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let added: Vec<_> = after.difference(&before).collect();
    assert_eq!(added, ["olist_ingest_sellers_archive.py"]);

    let lake = dir.path().join("lake");
    let json = Airflow::new(dir.path(), &dags).inspect(&lake);
    let d = dag(&json, "olist_ingest_sellers_archive");
    assert_eq!(d["timetable"]["summary"], "30 2 * * 1");
    assert_eq!(task(d, "bronze")["retries"], 4);
    assert!(
        task(d, "silver")["bash_command"]
            .as_str()
            .unwrap()
            .contains("run --table sellers_archive --no-produce --until silver")
    );
}

/// An HTTP endpoint standing in for Slack's incoming webhook: answers 200 and hands over the
/// bodies it receives.
fn webhook() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as Content-Length says.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        let _ = send.send(text[end + 4..].to_string());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    (url, receive)
}

#[test]
fn olist_pipeline_runs_in_airflow_and_a_broken_input_is_retried_alerted_and_notified() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // What the ingestion DAGs (or streaming producers) deliver: the sample in bronze.
    let mut ingest = framework(&lake);
    ingest
        .args(["run", "--all", "--until", "bronze", "--data"])
        .arg(sample());
    ok(ingest);
    let dags = dir.path().join("dags");
    generate(&idcards(), &dags);
    let airflow = Airflow::new(dir.path(), &dags);
    ok({
        let mut cmd = airflow.command("airflow");
        cmd.args(["db", "migrate"]);
        cmd
    });
    let (hook, alerts) = webhook();
    let dags_test = |models: &Path| {
        let mut cmd = airflow.command("airflow");
        cmd.args(["dags", "test", "olist_pipeline"])
            .env("FRAMEWORK_BIN", env!("CARGO_BIN_EXE_framework"))
            .env("FRAMEWORK_LAKE", &lake)
            .env("FRAMEWORK_IDCARDS", idcards())
            .env("FRAMEWORK_MODELS", models)
            .env("FRAMEWORK_EXPECTATIONS", repo().join("expectations"))
            .env("FRAMEWORK_DATA", sample())
            .env("FRAMEWORK_DAG_RETRY_DELAY_S", "1")
            .env("FRAMEWORK_ALERT_SLACK_WEBHOOK", &hook);
        output_within(cmd, Duration::from_secs(600))
    };

    let out = dags_test(&repo().join("models"));
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "airflow dags test failed:\n{log}");
    let states = airflow.states("olist_pipeline");
    for step in STEPS.iter().chain(&["notify_success"]) {
        assert_eq!(states[*step].0, "success", "{step}: {states:?}");
        assert_eq!(states[*step].1, 1, "{step} ran once: {states:?}");
    }
    assert_eq!(states["notify_failure"].0, "skipped", "{states:?}");
    // The DAG ran the binary for real: silver and gold are in the lake.
    let daily = crate::common::count(&lake, framework::lake::Layer::Gold, "gold_daily_sales");
    assert!(daily > 0, "gold_daily_sales is empty");
    assert!(alerts.try_recv().is_err(), "no alert on success");

    // A broken input: a gold model reads a column that does not exist.
    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    let broken = models.join("gold/gold_daily_sales.sql");
    let sql = std::fs::read_to_string(&broken).unwrap();
    assert!(sql.contains("order_id"));
    std::fs::write(&broken, sql.replacen("order_id", "order_idd", 1)).unwrap();
    let out = dags_test(&models);
    assert!(!out.status.success(), "the broken run must fail");
    let states = airflow.states("olist_pipeline");
    for step in ["check_freshness", "bronze_to_silver"] {
        assert_eq!(states[step].0, "success", "{step}: {states:?}");
    }
    assert_eq!(states["gold_run"].0, "failed", "{states:?}");
    assert_eq!(
        states["gold_run"].1, 3,
        "gold_run tried 1 + 2 retries: {states:?}"
    );
    for step in ["gold_test", "validate", "vacuum", "notify_success"] {
        assert_eq!(states[step].0, "upstream_failed", "{step}: {states:?}");
    }
    assert_eq!(states["notify_failure"].0, "success", "{states:?}");
    let alert = alerts
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the failure callback posted to the webhook");
    assert!(alert.contains("olist_pipeline.gold_run failed"), "{alert}");
    assert!(
        alerts.try_recv().is_err(),
        "one alert, for the last try only"
    );
}
