//! `bench`: rows/s of produce, bronze and silver for `framework run --all`, next to a peer doing
//! the same with Python pandas + deltalake (bench/peer_pandas.py), in the same run; then the
//! gold models' time (`framework build`) next to DuckDB running the same rendered SQL on the same
//! silver tables (bench/peer_duckdb_gold.py).
//!
//! ```text
//! scripts/bench                       # sample and scale 1
//! bench --scales 0,0.1 --python PY    # 0 = the bundled sample
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Benchmark framework run --all against the pandas + deltalake peer")]
struct Args {
    /// Scales to run, comma separated; 0 is the bundled real sample.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    scales: Vec<f64>,
    /// Python with pandas and deltalake (the peer); no peer when absent.
    #[arg(long, env = "FRAMEWORK_TEST_PYTHON")]
    python: Option<PathBuf>,
    /// Only the gold comparison, on the lakes a previous run left in the work folder.
    #[arg(long)]
    gold_only: bool,
    /// Builds of the gold models per engine; the best time counts.
    #[arg(long, default_value_t = 3)]
    gold_repeat: u32,
    /// Work folder (generated data and lakes).
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
}

/// Seconds per stage and peak memory of one run.
#[derive(Debug, Default)]
struct Figures {
    rows: f64,
    produce_s: f64,
    bronze_s: f64,
    silver_s: f64,
    wall_s: f64,
    peak_mib: f64,
}

impl Figures {
    fn from_report(json: &Value, wall_s: f64, rows_field: &str) -> Self {
        let mut f = Figures {
            wall_s,
            peak_mib: json["peak_rss_mib"].as_f64().unwrap_or(0.0),
            ..Default::default()
        };
        let tables: Vec<&Value> = match &json["tables"] {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => o.values().collect(),
            _ => Vec::new(),
        };
        for t in tables {
            f.rows += t[rows_field].as_f64().unwrap_or(0.0);
            f.produce_s += t["produce_s"].as_f64().unwrap_or(0.0);
            f.bronze_s += t["bronze_s"].as_f64().unwrap_or(0.0);
            f.silver_s += t["silver_s"].as_f64().unwrap_or(0.0);
        }
        f
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?.with_file_name("framework");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(&args.work)?;
    let mut lines = vec![
        "| data | rows | engine | produce rows/s | bronze rows/s | silver rows/s | run --all s | peak MiB |".to_owned(),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let mut gold_lines = vec![
        "| data | gold model | framework s | DuckDB s | DuckDB / framework |".to_owned(),
        "| --- | --- | ---: | ---: | ---: |".to_owned(),
    ];
    for scale in &args.scales {
        let (label, data) = if *scale == 0.0 {
            ("sample".to_owned(), repo.join("data/olist_sample"))
        } else {
            let dir = args.work.join(format!("data-{scale}"));
            if !dir.join("olist_orders_dataset.csv").exists() {
                run(Command::new(&exe)
                    .args(["generate-data", "--scale", &scale.to_string(), "--out"])
                    .arg(&dir))?;
            }
            (format!("scale {scale}"), dir)
        };
        let lake = args.work.join(format!("lake-{scale}"));
        if args.gold_only && lake.exists() {
            gold_lines.extend(gold(&exe, &repo, &lake, &label, &args)?);
            continue;
        }
        let ours = run_ours(&exe, &repo, &data, &lake)?;
        lines.push(row(&label, "framework", &ours));
        if let Some(python) = &args.python {
            let peer = run_peer(
                python,
                &repo,
                &data,
                &args.work.join(format!("peer-{scale}")),
            )?;
            lines.push(row(&label, "pandas + deltalake", &peer));
            lines.push(format!(
                "| {label} | | **ratio** | {:.1}x | {:.1}x | {:.1}x | {:.1}x | |",
                peer.produce_s / ours.produce_s,
                peer.bronze_s / ours.bronze_s,
                peer.silver_s / ours.silver_s,
                peer.wall_s / ours.wall_s
            ));
        }
        gold_lines.extend(gold(&exe, &repo, &lake, &label, &args)?);
    }
    if !args.gold_only {
        println!("{}", lines.join("\n"));
    }
    println!("\n{}", gold_lines.join("\n"));
    Ok(())
}

/// Seconds per gold model of the best of `--gold-repeat` full builds, ours and DuckDB's.
fn gold(exe: &Path, repo: &Path, lake: &Path, label: &str, args: &Args) -> Result<Vec<String>> {
    let framework = |extra: &[&str]| {
        let mut cmd = Command::new(exe);
        cmd.arg("--idcards")
            .arg(repo.join("idcards"))
            .arg("--models")
            .arg(repo.join("models"))
            .arg("--lake")
            .arg(lake)
            .args(extra)
            .stdout(std::process::Stdio::null());
        cmd
    };
    let report = lake.with_extension("gold.json");
    let mut ours: Option<std::collections::BTreeMap<String, f64>> = None;
    for _ in 0..args.gold_repeat.max(1) {
        run(framework(&["build", "--full-refresh", "--report"]).arg(&report))?;
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
        let times: std::collections::BTreeMap<String, f64> = json["models"]
            .as_array()
            .context("build report has models")?
            .iter()
            .map(|m| {
                (
                    m["model"].as_str().unwrap_or_default().to_owned(),
                    m["seconds"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        let total: f64 = times.values().sum();
        if ours.as_ref().is_none_or(|best| total < best.values().sum()) {
            ours = Some(times);
        }
    }
    let ours = ours.unwrap_or_default();
    let mut lines = Vec::new();
    let Some(python) = &args.python else {
        for (model, s) in &ours {
            lines.push(format!("| {label} | {model} | {s:.3} | | |"));
        }
        return Ok(lines);
    };
    let manifest = lake.with_extension("manifest.json");
    run(framework(&["compile", "--manifest"]).arg(&manifest))?;
    let out = Command::new(python)
        .arg(repo.join("bench/peer_duckdb_gold.py"))
        .arg("--lake")
        .arg(lake)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(lake.with_extension("duckdb"))
        .arg("--repeat")
        .arg(args.gold_repeat.max(1).to_string())
        .output()
        .context("starting the DuckDB peer")?;
    if !out.status.success() {
        bail!(
            "DuckDB peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: Value = serde_json::from_slice(&out.stdout)?;
    let mut total = (0.0, 0.0);
    for (model, s) in &ours {
        let peer = json["models"][model]["seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        total.0 += s;
        total.1 += peer;
        lines.push(format!(
            "| {label} | {model} | {s:.3} | {peer:.3} | {:.2}x |",
            peer / s
        ));
    }
    lines.push(format!(
        "| {label} | **five models** | {:.3} | {:.3} | **{:.2}x** |",
        total.0,
        total.1,
        total.1 / total.0
    ));
    Ok(lines)
}

fn row(label: &str, engine: &str, f: &Figures) -> String {
    format!(
        "| {label} | {:.0} | {engine} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} |",
        f.rows,
        f.rows / f.produce_s,
        f.rows / f.bronze_s,
        f.rows / f.silver_s,
        f.wall_s,
        f.peak_mib
    )
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

fn run_ours(exe: &Path, repo: &Path, data: &Path, lake: &Path) -> Result<Figures> {
    fresh(lake)?;
    let report = lake.with_extension("json");
    let started = Instant::now();
    run(Command::new(exe)
        .arg("--idcards")
        .arg(repo.join("idcards"))
        .arg("--models")
        .arg(repo.join("models"))
        .arg("--expectations")
        .arg(repo.join("expectations"))
        .arg("--lake")
        .arg(lake)
        .args(["run", "--all", "--until", "silver", "--data"])
        .arg(data)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null()))?;
    let wall = started.elapsed().as_secs_f64();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    Ok(Figures::from_report(&json, wall, "rows_read"))
}

fn run_peer(python: &Path, repo: &Path, data: &Path, lake: &Path) -> Result<Figures> {
    fresh(lake)?;
    let started = Instant::now();
    let out = Command::new(python)
        .arg(repo.join("bench/peer_pandas.py"))
        .arg("--data")
        .arg(data)
        .arg("--lake")
        .arg(lake)
        .output()
        .context("starting the Python peer")?;
    if !out.status.success() {
        bail!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("peer printed no JSON")?;
    let json: Value = serde_json::from_str(last)?;
    let mut figures = Figures::from_report(&json, wall, "rows");
    figures.peak_mib = json["peak_rss_mb"].as_f64().unwrap_or(0.0);
    Ok(figures)
}
