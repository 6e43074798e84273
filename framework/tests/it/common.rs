//! Helpers: run the binary in temp dirs, read tables, compute expectations independently.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::arrow::util::pretty::pretty_format_batches;
use deltalake::datafusion::prelude::SessionContext;
use framework::bus::EmbeddedLog;
use framework::idcard::{Project, load_dir};
use framework::lake::{Lake, Layer, session};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn sample() -> PathBuf {
    repo().join("data/olist_sample")
}

pub fn idcards() -> PathBuf {
    repo().join("idcards")
}

pub fn project() -> Project {
    load_dir(&idcards()).unwrap_or_else(|d| panic!("{d}"))
}

/// `framework` with the repo's `--idcards`, `--models` and `--expectations`, and `--lake` set.
pub fn framework(lake: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framework"));
    cmd.arg("--idcards")
        .arg(idcards())
        .arg("--models")
        .arg(repo().join("models"))
        .arg("--expectations")
        .arg(repo().join("expectations"))
        .arg("--lake")
        .arg(lake);
    cmd
}

/// The commit files (`<version>.json`) of the Delta table in `table`, oldest first.
pub fn delta_commits(table: &Path) -> Vec<PathBuf> {
    let mut commits: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    commits
}

/// The Python that runs the independent checks (the test venv's, else `python3`).
pub fn python() -> String {
    std::env::var("FRAMEWORK_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A session with one lake table registered as `t`.
async fn registered(lake: &Path, layer: Layer, table: &str) -> SessionContext {
    let ctx = session();
    assert!(
        Lake::new(lake)
            .register(&ctx, layer, table, "t")
            .await
            .unwrap(),
        "{layer}/{table} missing"
    );
    ctx
}

/// The result of `sql` over one table registered as `t`.
pub fn batches(lake: &Path, layer: Layer, table: &str, sql: &str) -> Vec<RecordBatch> {
    runtime().block_on(async {
        let ctx = registered(lake, layer, table).await;
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    })
}

/// Column names of a lake table, in order.
pub fn columns(lake: &Path, layer: Layer, table: &str) -> Vec<String> {
    runtime().block_on(async {
        let ctx = registered(lake, layer, table).await;
        let frame = ctx.table("t").await.unwrap();
        frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    })
}

/// Every row of a lake table as text (`a | b | c`, nulls as `null`), sorted.
pub fn rows(lake: &Path, layer: Layer, table: &str) -> Vec<String> {
    batch_rows(&batches(lake, layer, table, "SELECT * FROM t"))
}

/// Every row of `batches` as text (`a | b | c`, nulls as `null`), sorted.
pub fn batch_rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns.iter().map(|c| c.value(row).to_string()).collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}

/// The repo's gold models (`models/gold`).
pub const GOLD_MODELS: [&str; 5] = [
    "gold_daily_sales",
    "gold_seller_performance",
    "gold_customer_rfm",
    "gold_product_analytics",
    "gold_delivery_performance",
];

/// How long one child process of a test may run before the test kills it and fails.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end (stdin closed, output captured); kills it and fails the test when it
/// runs longer than [`TIMEOUT`].
pub fn output(cmd: Command) -> Output {
    output_within(cmd, TIMEOUT)
}

/// [`output`] with another limit.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let Some(status) = wait_within(&mut child, limit) else {
        panic!("{cmd:?} still running after {limit:?}: killed");
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits for `child` at most `limit`; past it, kills it and returns `None`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait(); // SIGKILLed: returns at once
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies a folder tree (files and sub-folders) from `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The values of `column` in a sample CSV, row by row (read with the csv crate: independent of
/// the engine's reader).
pub fn csv_values(file: &str, column: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_path(sample().join(file)).unwrap();
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == column)
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[at].to_owned())
        .collect()
}

/// Rows of a sample CSV whose `column` passes `keep`.
pub fn csv_count(file: &str, column: &str, keep: impl Fn(&str) -> bool) -> u64 {
    csv_values(file, column).iter().filter(|v| keep(v)).count() as u64
}

/// Rows of a sample CSV whose `column` holds a value that occurs in more than one row.
pub fn csv_repeated(file: &str, column: &str) -> u64 {
    let mut seen = std::collections::HashMap::<String, u64>::new();
    for value in csv_values(file, column) {
        *seen.entry(value).or_default() += 1;
    }
    seen.values().filter(|n| **n > 1).sum()
}

/// A copy of the repo's idcards in `dir/idcards` with `from` replaced by `to` in `file` (the
/// text must be there).
pub fn idcards_with(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let copy = dir.join("idcards");
    copy_dir(&idcards(), &copy);
    let path = copy.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    copy
}

/// Generates a synthetic Olist dataset at `scale` under `dir/data` (`lake` is only the
/// command's `--lake`).
pub fn generate_data(lake: &Path, dir: &Path, scale: &str) -> PathBuf {
    let data = dir.join("data");
    let mut generate = framework(lake);
    generate
        .args(["generate-data", "--scale", scale, "--out"])
        .arg(&data);
    ok(generate);
    data
}

pub fn ok(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{shown} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn count(lake: &Path, layer: Layer, table: &str) -> u64 {
    runtime()
        .block_on(Lake::new(lake).count(layer, table))
        .unwrap()
}

/// Messages on an embedded topic (sum of partition end offsets).
pub fn topic_messages(lake: &Path, topic: &str, partitions: u32) -> u64 {
    let bus = EmbeddedLog::new(Lake::new(lake).bus_dir().expect("a local lake"));
    (0..partitions)
        .map(|p| bus.end_offset(topic, p).unwrap())
        .sum()
}

/// Runs a SQL query over one table registered as `t`; returns the pretty-printed result.
pub fn query(lake: &Path, layer: Layer, table: &str, sql: &str) -> String {
    pretty_format_batches(&batches(lake, layer, table, sql))
        .unwrap()
        .to_string()
}

/// Distinct keys of a table computed straight from its CSV with the `csv` crate (an
/// independent reading: BOM stripped, header renames applied, zip prefixes padded).
pub fn distinct_keys_from_csv(data: &Path, project: &Project, table: &str) -> u64 {
    keys_from_csv(data, project, table).len() as u64
}

/// The distinct keys of a table read straight from its CSV (as [`distinct_keys_from_csv`]),
/// each as its cells joined by `|`.
pub fn keys_from_csv(data: &Path, project: &Project, table: &str) -> HashSet<String> {
    let t = project.table(table).unwrap();
    if t.config.source.format == framework::idcard::config::SourceFormat::Json {
        // JSON Lines with scalar keys, read with serde_json.
        let text = std::fs::read_to_string(data.join(&t.config.source.path)).unwrap();
        return text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let row: serde_json::Value = serde_json::from_str(l).unwrap();
                let cells: Vec<String> = t
                    .key()
                    .iter()
                    .map(|k| row[k.as_str()].as_str().unwrap_or_default().to_owned())
                    .collect();
                cells.join("|")
            })
            .collect();
    }
    let bytes = std::fs::read(data.join(&t.config.source.path)).unwrap();
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&bytes)
        .to_vec();
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            t.config
                .source
                .rename
                .get(h)
                .cloned()
                .unwrap_or_else(|| h.to_owned())
        })
        .collect();
    let mut keys = HashSet::new();
    for record in reader.records() {
        let record = record.unwrap();
        let row: BTreeMap<&str, &str> = headers
            .iter()
            .map(String::as_str)
            .zip(record.iter())
            .collect();
        let key: Vec<String> = t
            .key()
            .iter()
            .map(|k| {
                let v = row[k.as_str()];
                if k.ends_with("zip_code_prefix") {
                    format!("{v:0>5}")
                } else {
                    v.to_owned()
                }
            })
            .collect();
        keys.insert(key.join("|"));
    }
    keys
}

/// Asserts that `out` is a process that aborted at the crash point `point`.
pub fn assert_crashed_at(out: &Output, point: &str) {
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(&format!("crash point {point}")),
        "{point} was not reached:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Parquet files in `dir` (a Delta table's folder: live or not).
pub fn parquet_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "parquet")
        })
        .count()
}

/// Each of `tables` (folders under the lake) as the Python deltalake package reads its log:
/// the live files, and the files its VACUUM commits say they deleted.
pub fn live_and_vacuumed(lake: &Path, tables: &[&str]) -> serde_json::Value {
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
out = {}
for path in sys.argv[2:]:
    table = DeltaTable(sys.argv[1] + "/" + path)
    deleted = sum(
        int(c.get("operationMetrics", {}).get("numDeletedFiles", 0))
        for c in table.history()
        if c.get("operation") == "VACUUM END"
    )
    live = sorted(os.path.basename(uri) for uri in table.file_uris())
    out[path] = {"live": live, "vacuumed": deleted}
print(json.dumps(out))
"#;
    python_json(
        script,
        std::iter::once(lake.as_os_str()).chain(tables.iter().map(std::ffi::OsStr::new)),
    )
}

/// What the Python `script` (given inline, run by the test venv's Python with `args`) prints
/// as JSON; a script that fails fails the test, with its error.
pub fn python_json<'a>(
    script: &str,
    args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "the Python script failed (install the venv: source scripts/env.sh && ensure_venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Parquet files in a table's folder, by name.
pub fn files_on_disk(table: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(table)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".parquet"))
        .collect();
    files.sort();
    files
}
