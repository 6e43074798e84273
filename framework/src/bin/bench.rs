//! `bench`: `framework run --all` (produce, bronze, silver, gold, checks) on generated Olist data,
//! a first delivery into a fresh lake, the same files again (`--resend`) and a 1% delivery, next
//! to a vectorised Python peer doing the same job in the same run (bench/peer_pandas.py: pyarrow,
//! pandas, DuckDB and the deltalake package, no row loop; its gold is DuckDB running our rendered
//! SQL, bench/peer_duckdb_gold.py); then each stage's throughput alone (`run --until produce`,
//! then `--no-produce --until bronze`, then `--until silver`; then silver alone on the same
//! files again, every row a duplicate) next to the peer's stages, and each gold model's time
//! next to DuckDB's.
//!
//! With `--kafka`, instead: rows/s of produce and bronze through a real Kafka-protocol broker
//! (Tansu, started here), `framework run --all --until bronze --bus kafka://...` next to
//! bench/peer_kafka.py (pyarrow + DuckDB-rendered messages + confluent-kafka + deltalake, no row
//! loop but the client's per-message produce call) on the same broker.
//!
//! ```text
//! scripts/bench                       # sample and scale 1
//! scripts/bench --scales 1 --profile  # where the time goes, per table, stage and phase
//! bench --scales 0,0.1 --python PY    # 0 = the bundled sample
//! scripts/bench --kafka --scales 1    # produce and bronze on Tansu
//! ```

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark framework run --all against the pandas + deltalake peer (--kafka: produce \
             and bronze on a Tansu broker against pyarrow + confluent-kafka)"
)]
struct Args {
    /// Scales to run, comma separated; 0 is the bundled real sample.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    scales: Vec<f64>,
    /// Python with pandas and deltalake (the peer); no peer when absent.
    #[arg(long, env = "FRAMEWORK_TEST_PYTHON")]
    python: Option<PathBuf>,
    /// Also print where the time goes: seconds per table and stage, and per phase of the run.
    #[arg(long)]
    profile: bool,
    /// Only the gold comparison, on the lakes a previous run left in the work folder.
    #[arg(long)]
    gold_only: bool,
    /// Builds of the gold models per engine; the best time counts.
    #[arg(long, default_value_t = 3)]
    gold_repeat: u32,
    /// Work folder (generated data and lakes).
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
    /// Benchmark produce and bronze through a real Kafka-protocol broker instead: starts Tansu
    /// (`--tansu`) on a free loopback port, a fresh broker per scale, and runs
    /// `framework run --all --until bronze --bus kafka://...` and bench/peer_kafka.py (pyarrow,
    /// DuckDB-rendered messages, confluent-kafka Producer/Consumer, deltalake) against it; no
    /// silver and no gold comparison.
    #[arg(long, conflicts_with = "gold_only")]
    kafka: bool,
    /// The Tansu broker binary for `--kafka` (`tansu` on the PATH when unset).
    #[arg(long, env = "FRAMEWORK_TEST_TANSU")]
    tansu: Option<PathBuf>,
    /// The cost of PII encryption instead: values/s of each mode, and `run --all` on the same
    /// data with the idcards' `pii:` entries and without them (alternated, best of two).
    #[arg(long, conflicts_with_all = ["gold_only", "kafka"])]
    pii: bool,
}

/// Seconds per stage and peak memory of one run.
#[derive(Debug, Default)]
struct Figures {
    rows: f64,
    produce_s: f64,
    bronze_s: f64,
    silver_s: f64,
    /// Silver's seconds for a second delivery of the same files (every row a duplicate), alone
    /// (ours; [`stages_alone`]).
    silver_again_s: f64,
    wall_s: f64,
    peak_mib: f64,
    /// Our run's `--report` JSON (null for the peer).
    report: Value,
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
    if args.kafka {
        return kafka(&exe, &repo, &args);
    }
    if args.pii {
        return pii(&exe, &repo, &args);
    }
    let mut lines = vec![
        "| data | rows | engine | produce rows/s | bronze rows/s | silver rows/s | 1st delivery s | again, unchanged s | 1% delivery s | peak MiB |".to_owned(),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let mut gold_lines = vec![
        "| data | gold model | framework s | DuckDB s | DuckDB / framework |".to_owned(),
        "| --- | --- | ---: | ---: | ---: |".to_owned(),
    ];
    let mut alone_lines = vec![
        "| data | rows | engine | produce rows/s | bronze rows/s | silver (first load) rows/s | silver, the same files again s |"
            .to_owned(),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let mut profiles = Vec::new();
    for scale in &args.scales {
        let (label, data) = data_for(&exe, &repo, &args.work, *scale)?;
        let lake = args.work.join(format!("lake-{scale}"));
        if args.gold_only && lake.exists() {
            gold_lines.extend(gold(&exe, &repo, &lake, &label, &args)?.0);
            continue;
        }
        let small = one_percent(
            &exe,
            &data,
            &args.work,
            &args.work.join(format!("data-{scale}-1pct")),
        )?;
        let ours = run_ours(&exe, &repo, [&data, &data, &small], &lake)?;
        let alone = stages_alone(
            &exe,
            &repo,
            &data,
            &args.work.join(format!("stages-{scale}")),
        )?;
        alone_lines.push(format!(
            "| {label} | {:.0} | framework, each stage alone | {:.0} | {:.0} | {:.0} | {:.2} |",
            alone.rows,
            alone.rows / alone.produce_s,
            alone.rows / alone.bronze_s,
            alone.rows / alone.silver_s,
            alone.silver_again_s,
        ));
        if args.profile {
            profiles.push(profile(&label, &ours));
        }
        let (gold_rows, duckdb_s) = gold(&exe, &repo, &lake, &label, &args)?;
        gold_lines.extend(gold_rows);
        lines.push(row(&label, "framework", &ours));
        if let Some(python) = &args.python {
            let mut peer = run_peer(
                python,
                &repo,
                [&data, &data, &small],
                &args.work.join(format!("peer-{scale}")),
            )?;
            // The peer's gold: DuckDB on the same silver tables, once per delivery.
            for delivery in &mut peer {
                delivery.wall_s += duckdb_s;
            }
            lines.push(row(
                &label,
                "Python peer (pyarrow, pandas, DuckDB, deltalake)",
                &peer,
            ));
            alone_lines.push(format!(
                "| {label} | {:.0} | Python peer (its stages run one after the other) | {:.0} | {:.0} | {:.0} | {:.2} |",
                peer[0].rows,
                peer[0].rows / peer[0].produce_s,
                peer[0].rows / peer[0].bronze_s,
                peer[0].rows / peer[0].silver_s,
                peer[1].silver_s,
            ));
            lines.push(format!(
                "| {label} | | **peer / framework** | {:.1}x | {:.1}x | {:.1}x | {:.1}x | {:.1}x | {:.1}x | |",
                peer[0].produce_s / ours[0].produce_s,
                peer[0].bronze_s / ours[0].bronze_s,
                peer[0].silver_s / ours[0].silver_s,
                peer[0].wall_s / ours[0].wall_s,
                peer[1].wall_s / ours[1].wall_s,
                peer[2].wall_s / ours[2].wall_s,
            ));
        }
    }
    if !args.gold_only {
        println!("{}", lines.join("\n"));
        println!("\n{}", alone_lines.join("\n"));
    }
    println!("\n{}", gold_lines.join("\n"));
    for profile in profiles {
        println!("\n{profile}");
    }
    Ok(())
}

/// How a changed row of a source file differs from the row the lake holds: one column gets a
/// value that is still valid for its idcard (so the row is applied, not quarantined).
enum Change {
    /// The column takes this value.
    Set(&'static str, &'static str),
    /// The column's text gets this suffix (a latitude with one more digit is a new
    /// geolocation key: that table is APPEND, where a change is a new row).
    Append(&'static str, &'static str),
}

impl Change {
    fn column(&self) -> &'static str {
        match self {
            Change::Set(column, _) | Change::Append(column, _) => column,
        }
    }

    /// The changed value of a field that held `old`.
    fn apply(&self, old: &[u8]) -> Vec<u8> {
        match self {
            Change::Set(_, value) => value.as_bytes().to_vec(),
            Change::Append(_, suffix) => [old, suffix.as_bytes()].concat(),
        }
    }
}

/// Per source file, the change its changed rows carry.
const CHANGES: &[(&str, Change)] = &[
    (
        "olist_orders_dataset.csv",
        Change::Set("order_status", "canceled"),
    ),
    (
        "olist_order_items_dataset.csv",
        Change::Set("freight_value", "9.99"),
    ),
    (
        "olist_order_payments_dataset.csv",
        Change::Set("payment_installments", "2"),
    ),
    (
        "olist_order_reviews_dataset.csv",
        Change::Set("review_score", "3"),
    ),
    (
        "olist_products_dataset.csv",
        Change::Set("product_photos_qty", "2"),
    ),
    (
        "olist_customers_dataset.csv",
        Change::Set("customer_state", "SP"),
    ),
    (
        "olist_sellers_dataset.csv",
        Change::Set("seller_state", "SP"),
    ),
    (
        "olist_geolocation_dataset.csv",
        Change::Append("geolocation_lat", "1"),
    ),
    (
        "product_category_name_translation.csv",
        Change::Append("product_category_name_english", "_2"),
    ),
];

/// The FULL table's file: each delivery is the whole table, so it is sent whole (1% of its
/// rows changed) rather than cut to 1%.
const FULL_FILE: &str = "product_category_name_translation.csv";

/// Orders at scale 1 (`generate-data`), to size the new rows of a delivery to its data.
const ORDERS_AT_SCALE_1: f64 = 99_441.0;

/// A data folder for the incremental figure: 1% new and changed rows of each source file. Half
/// of it is the first 0.5% of the file's records with one column changed ([`CHANGES`]), the
/// other half new keys (`generate-data` with another seed, sized to 0.5% of `data`'s orders;
/// the new rows refer to each other, so new items have their new orders, products and
/// sellers; their timestamps moved after `data`'s last order, see [`new_orders_shift`]). The
/// FULL table's file is sent whole with 1% of its rows changed.
fn one_percent(exe: &Path, data: &Path, work: &Path, out: &Path) -> Result<PathBuf> {
    let read = |path: &Path| -> Result<Vec<csv::ByteRecord>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(path)?;
        Ok(reader.byte_records().collect::<Result<_, _>>()?)
    };
    let orders = read(&data.join("olist_orders_dataset.csv"))?
        .len()
        .saturating_sub(1);
    let scale = 0.005 * orders as f64 / ORDERS_AT_SCALE_1;
    let new_dir = work.join(format!("new-rows-{scale:.6}"));
    if !new_dir.join("olist_orders_dataset.csv").exists() {
        run(Command::new(exe)
            .args([
                "generate-data",
                "--seed",
                "4242",
                "--scale",
                &format!("{scale:.6}"),
                "--out",
            ])
            .arg(&new_dir)
            .stdout(Stdio::null()))?;
    }
    let shift = new_orders_shift(data, &new_dir)?;
    std::fs::create_dir_all(out)?;
    for (file, change) in CHANGES {
        let records = read(&data.join(file))?;
        let Some((header, rows)) = records.split_first() else {
            bail!("{} is empty", data.join(file).display());
        };
        let column = change.column();
        let at = header
            .iter()
            .position(|h| h == column.as_bytes())
            .with_context(|| format!("{file} has no column {column}"))?;
        let changed = |record: &csv::ByteRecord| -> csv::ByteRecord {
            record
                .iter()
                .enumerate()
                .map(|(i, v)| if i == at { change.apply(v) } else { v.to_vec() })
                .collect()
        };
        let mut writer = csv::Writer::from_path(out.join(file))?;
        writer.write_byte_record(header)?;
        if *file == FULL_FILE {
            let change = rows.len().div_ceil(100);
            for (i, record) in rows.iter().enumerate() {
                let record = if i < change {
                    changed(record)
                } else {
                    record.clone()
                };
                writer.write_byte_record(&record)?;
            }
            writer.flush()?;
            continue;
        }
        for record in rows.iter().take(rows.len().div_ceil(200)) {
            writer.write_byte_record(&changed(record))?;
        }
        // The new rows, in this file's column order.
        let generated = read(&new_dir.join(file))?;
        if let Some((new_header, new_rows)) = generated.split_first() {
            let order: Vec<usize> = header
                .iter()
                .map(|h| {
                    new_header.iter().position(|n| n == h).with_context(|| {
                        format!("generated {file} lacks a column of {}", data.display())
                    })
                })
                .collect::<Result<_>>()?;
            for record in new_rows {
                let record: csv::ByteRecord = order
                    .iter()
                    .map(|&i| later(record.get(i).unwrap_or_default(), shift))
                    .collect();
                writer.write_byte_record(&record)?;
            }
        }
        writer.flush()?;
    }
    Ok(out.to_path_buf())
}

/// The timestamps of source files: `2017-10-02 10:56:33`.
const TIMESTAMP: &str = "%Y-%m-%d %H:%M:%S";

/// How far the new rows' timestamps move so that the first new order is placed a day after
/// the last order of `data`: new orders are recent, as in a real delivery (the generator
/// spreads its orders over the Olist years; all of a row's timestamps move together).
fn new_orders_shift(data: &Path, new_dir: &Path) -> Result<chrono::TimeDelta> {
    let purchases = |path: &Path| -> Result<Vec<chrono::NaiveDateTime>> {
        let mut reader = csv::Reader::from_path(path)?;
        let at = reader
            .headers()?
            .iter()
            .position(|h| h == "order_purchase_timestamp")
            .with_context(|| format!("{} has no order_purchase_timestamp", path.display()))?;
        Ok(reader
            .records()
            .filter_map(|r| r.ok())
            .filter_map(|r| chrono::NaiveDateTime::parse_from_str(r.get(at)?, TIMESTAMP).ok())
            .collect())
    };
    let last = purchases(&data.join("olist_orders_dataset.csv"))?
        .into_iter()
        .max();
    let first = purchases(&new_dir.join("olist_orders_dataset.csv"))?
        .into_iter()
        .min();
    Ok(match (last, first) {
        (Some(last), Some(first)) => chrono::TimeDelta::days((last - first).num_days() + 1),
        _ => chrono::TimeDelta::zero(),
    })
}

/// `value` moved `shift` later when it is a timestamp, as it is otherwise.
fn later(value: &[u8], shift: chrono::TimeDelta) -> Vec<u8> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| chrono::NaiveDateTime::parse_from_str(text, TIMESTAMP).ok())
        .map_or_else(
            || value.to_vec(),
            |at| (at + shift).format(TIMESTAMP).to_string().into_bytes(),
        )
}

/// Seconds per table and stage, and per phase, of each delivery of our run.
fn profile(label: &str, ours: &[Figures]) -> String {
    let mut out = vec![format!(
        "profile, {label}:\n| delivery | table | rows | produce s | bronze s | silver s |\n| --- | --- | ---: | ---: | ---: | ---: |"
    )];
    for (i, delivery) in ours.iter().enumerate() {
        for t in delivery.report["tables"].as_array().into_iter().flatten() {
            out.push(format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                DELIVERIES[i],
                t["table"].as_str().unwrap_or_default(),
                t["rows_read"],
                t["produce_s"].as_f64().unwrap_or(0.0),
                t["bronze_s"].as_f64().unwrap_or(0.0),
                t["silver_s"].as_f64().unwrap_or(0.0),
            ));
        }
        let phases: Vec<String> = delivery.report["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {:.2} s",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        out.push(format!(
            "| {} | phases (wall) | | {} | | |",
            DELIVERIES[i],
            phases.join(", ")
        ));
    }
    out.join("\n")
}

const DELIVERIES: [&str; 3] = ["1st", "again", "1%"];

/// The label and the data folder of a scale: the bundled sample for 0, else data generated once
/// into the work folder.
fn data_for(exe: &Path, repo: &Path, work: &Path, scale: f64) -> Result<(String, PathBuf)> {
    if scale == 0.0 {
        return Ok(("sample".to_owned(), repo.join("data/olist_sample")));
    }
    let dir = work.join(format!("data-{scale}"));
    if !dir.join("olist_orders_dataset.csv").exists() {
        run(Command::new(exe)
            .args(["generate-data", "--scale", &scale.to_string(), "--out"])
            .arg(&dir))?;
    }
    Ok((format!("scale {scale}"), dir))
}

/// `--kafka`: produce and bronze through Tansu, ours next to bench/peer_kafka.py.
fn kafka(exe: &Path, repo: &Path, args: &Args) -> Result<()> {
    let mut lines = vec![
        "| data | rows | engine | produce rows/s | bronze rows/s | produce+bronze s | wall s | peak MiB |"
            .to_owned(),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let mut notes = Vec::new();
    for scale in &args.scales {
        let (label, data) = data_for(exe, repo, &args.work, *scale)?;
        // A fresh broker per scale: our topics have fixed names (raw_*), and a fresh lake reads
        // its topics from the start.
        let broker = Broker::start(args.tansu.as_deref(), &args.work)?;
        eprintln!("== {label}: Tansu on {}", broker.bootstrap());
        let lake = args.work.join(format!("kafka-lake-{scale}"));
        fresh(&lake)?;
        let report = lake.with_extension("json");
        let started = Instant::now();
        run(framework(exe, repo, &lake)
            .arg("--bus")
            .arg(format!("kafka://{}", broker.bootstrap()))
            .args(["run", "--all", "--simulate", "--until", "bronze", "--data"])
            .arg(&data)
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null()))?;
        let wall = started.elapsed().as_secs_f64();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
        let ours = Figures::from_report(&json, wall, "rows_read");
        let (produced, consumed) = sums(&json, "produced", "consumed");
        if produced != consumed {
            notes.push(format!(
                "{label}: framework produced {produced} messages but bronze consumed {consumed}"
            ));
        }
        lines.push(kafka_row(&label, "framework", &ours));
        eprintln!(
            "== {label}: framework produce {:.1} s, bronze {:.1} s",
            ours.produce_s, ours.bronze_s
        );
        if let Some(python) = &args.python {
            let peer_lake = args.work.join(format!("kafka-peer-{scale}"));
            fresh(&peer_lake)?;
            let started = Instant::now();
            let mut peer = Command::new(python);
            peer.arg(repo.join("bench/peer_kafka.py"))
                .arg("--data")
                .arg(&data)
                .arg("--lake")
                .arg(&peer_lake)
                .arg("--bootstrap")
                .arg(broker.bootstrap())
                .stderr(Stdio::inherit());
            let out = output(&mut peer, true).context("running the Python Kafka peer")?;
            if !out.status.success() {
                bail!("Kafka peer failed with {}", out.status);
            }
            let json = last_json(&out.stdout)?;
            let mut peer = Figures::from_report(&json, started.elapsed().as_secs_f64(), "rows");
            peer.peak_mib = json["peak_rss_mb"].as_f64().unwrap_or(0.0);
            let (sent, read) = sums(&json, "messages", "consumed");
            if sent != read {
                notes.push(format!(
                    "{label}: the peer sent {sent} messages but read {read}"
                ));
            }
            lines.push(kafka_row(
                &label,
                "pyarrow + DuckDB + confluent-kafka + deltalake",
                &peer,
            ));
            lines.push(format!(
                "| {label} | | **ratio** (peer s / ours) | {:.1}x | {:.1}x | {:.1}x | {:.1}x | |",
                peer.produce_s / ours.produce_s,
                peer.bronze_s / ours.bronze_s,
                (peer.produce_s + peer.bronze_s) / (ours.produce_s + ours.bronze_s),
                peer.wall_s / ours.wall_s
            ));
        }
        drop(broker);
    }
    println!("{}", lines.join("\n"));
    for note in notes {
        println!("\nWARNING: {note}");
    }
    Ok(())
}

fn kafka_row(label: &str, engine: &str, f: &Figures) -> String {
    format!(
        "| {label} | {:.0} | {engine} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |",
        f.rows,
        f.rows / f.produce_s,
        f.rows / f.bronze_s,
        f.produce_s + f.bronze_s,
        f.wall_s,
        f.peak_mib
    )
}

/// Sums of two per-table counters of a report.
fn sums(json: &Value, a: &str, b: &str) -> (u64, u64) {
    let tables: Vec<&Value> = match &json["tables"] {
        Value::Array(t) => t.iter().collect(),
        Value::Object(t) => t.values().collect(),
        _ => Vec::new(),
    };
    tables.iter().fold((0, 0), |(x, y), t| {
        (
            x + t[a].as_u64().unwrap_or(0),
            y + t[b].as_u64().unwrap_or(0),
        )
    })
}

/// The last line of `stdout` that is a JSON object (what the peers print).
fn last_json(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("peer printed no JSON")?;
    Ok(serde_json::from_str(last)?)
}

/// A Tansu broker (topics in memory) on a free loopback port, killed when dropped, so also when
/// the benchmark stops on an error.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(tansu: Option<&Path>, work: &Path) -> Result<Self> {
        let tansu = tansu.unwrap_or(Path::new("tansu"));
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = work.join("tansu.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the Tansu broker `{}`: scripts/bench --kafka installs it \
                     (`cargo install tansu --locked --features dynostore,libsql`), or pass \
                     --tansu / set FRAMEWORK_TEST_TANSU",
                    tansu.display()
                )
            })?;
        let mut broker = Broker { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("Tansu exited with {status}; see {}", log_path.display());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "Tansu did not listen on port {port} within 20 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds per gold model of the best of `--gold-repeat` full builds, ours and DuckDB's, and the
/// five models' total: our build's wall time, the sum of DuckDB's (which runs them in turn).
/// Also returns DuckDB's total seconds for the five models (0 without a Python).
fn gold(
    exe: &Path,
    repo: &Path,
    lake: &Path,
    label: &str,
    args: &Args,
) -> Result<(Vec<String>, f64)> {
    let framework = |extra: &[&str]| {
        let mut cmd = framework(exe, repo, lake);
        cmd.args(extra).stdout(std::process::Stdio::null());
        cmd
    };
    let report = lake.with_extension("gold.json");
    // The best build by wall time (models of a wave are built at once, so theirs overlap).
    let mut ours: Option<(f64, std::collections::BTreeMap<String, f64>)> = None;
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
        let wall = json["seconds"]
            .as_f64()
            .context("build report has seconds")?;
        if ours.as_ref().is_none_or(|best| wall < best.0) {
            ours = Some((wall, times));
        }
    }
    let (wall, ours) = ours.unwrap_or_default();
    let mut lines = Vec::new();
    let Some(python) = &args.python else {
        for (model, s) in &ours {
            lines.push(format!("| {label} | {model} | {s:.3} | | |"));
        }
        lines.push(format!(
            "| {label} | **five models (wall)** | {wall:.3} | | |"
        ));
        return Ok((lines, 0.0));
    };
    let manifest = lake.with_extension("manifest.json");
    run(framework(&["compile", "--manifest"]).arg(&manifest))?;
    let mut peer = Command::new(python);
    peer.arg(repo.join("bench/peer_duckdb_gold.py"))
        .arg("--lake")
        .arg(lake)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(lake.with_extension("duckdb"))
        .arg("--repeat")
        .arg(args.gold_repeat.max(1).to_string());
    let out = output(&mut peer, false).context("running the DuckDB peer")?;
    if !out.status.success() {
        bail!(
            "DuckDB peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: Value = serde_json::from_slice(&out.stdout)?;
    // Per model, our seconds overlap the other models of its wave: no ratio there.
    let mut peer_total = 0.0;
    for (model, s) in &ours {
        let peer = json["models"][model]["seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        peer_total += peer;
        lines.push(format!("| {label} | {model} | {s:.3} | {peer:.3} | |"));
    }
    lines.push(format!(
        "| {label} | **five models (wall)** | {wall:.3} | {peer_total:.3} | **{:.2}x** |",
        peer_total / wall
    ));
    Ok((lines, peer_total))
}

/// One engine's line: stage rates of the first delivery, the wall time of each delivery.
fn row(label: &str, engine: &str, f: &[Figures]) -> String {
    format!(
        "| {label} | {:.0} | {engine} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} |",
        f[0].rows,
        f[0].rows / f[0].produce_s,
        f[0].rows / f[0].bronze_s,
        f[0].rows / f[0].silver_s,
        f[0].wall_s,
        f[1].wall_s,
        f[2].wall_s,
        f.iter().map(|d| d.peak_mib).fold(0.0, f64::max)
    )
}

/// The repo's idcards of the nine Olist CSV tables: the peers' job. The nested JSON example
/// (`customer_profiles`, which no peer loads) is left out, so both sides do the same work.
fn olist_idcards(repo: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("framework-bench-idcards-{}", std::process::id()));
    let copied = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(repo.join("idcards"))? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            if !text.contains("format: json") {
                std::fs::write(dir.join(path.file_name().expect("a file")), text)?;
            }
        }
        Ok(())
    })();
    copied.unwrap_or_else(|e| panic!("copying the idcards into {}: {e}", dir.display()));
    dir
}

/// `framework` with the Olist idcards ([`olist_idcards`]), the repo's models and expectations,
/// on `lake`.
fn framework(exe: &Path, repo: &Path, lake: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--idcards")
        .arg(olist_idcards(repo))
        .arg("--models")
        .arg(repo.join("models"))
        .arg("--expectations")
        .arg(repo.join("expectations"))
        .arg("--lake")
        .arg(lake);
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let status = wait_bounded(child, cmd)?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The longest a child of the bench (our binary, a Python peer) may take.
const CHILD_LIMIT: Duration = Duration::from_secs(3600);

/// [`Command::output`] within [`CHILD_LIMIT`]: standard output captured, and standard error
/// too unless the caller sent it elsewhere (`stderr_set`).
fn output(cmd: &mut Command, stderr_set: bool) -> Result<std::process::Output> {
    cmd.stdout(Stdio::piped());
    if !stderr_set {
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_bounded(child, cmd)?;
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Waits for `child` (started by `cmd`), killing it past [`CHILD_LIMIT`].
fn wait_bounded(mut child: Child, cmd: &Command) -> Result<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} ran over {} s and was killed",
                CHILD_LIMIT.as_secs()
            );
        }
        // Short: the wall time of a run includes the wait until its end is seen (20 ms steps
        // added 10 ms to each figure on average, 1% of the 1% delivery's).
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// Our `run --all` on a fresh `lake`, once per data folder in turn (the later ones with
/// `--resend`, so that unchanged files are sent again).
fn run_ours(exe: &Path, repo: &Path, deliveries: [&Path; 3], lake: &Path) -> Result<Vec<Figures>> {
    fresh(lake)?;
    let report = lake.with_extension("json");
    let mut out = Vec::new();
    for (i, data) in deliveries.into_iter().enumerate() {
        let mut cmd = framework(exe, repo, lake);
        cmd.args(["run", "--all", "--simulate", "--data"])
            .arg(data)
            .arg("--report")
            .arg(&report)
            .stdout(std::process::Stdio::null());
        if i > 0 {
            cmd.arg("--resend");
        }
        let started = Instant::now();
        run(&mut cmd)?;
        let wall = started.elapsed().as_secs_f64();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
        let mut figures = Figures::from_report(&json, wall, "rows_read");
        figures.report = json;
        out.push(figures);
    }
    Ok(out)
}

/// The runs of [`stages_alone`], in order.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The source files onto the topics.
    Produce,
    /// Bronze alone, then silver alone (a first load).
    Bronze,
    Silver,
    /// The same files again up to bronze, then silver alone on them.
    AgainToBronze,
    AgainSilver,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Produce,
        Step::Bronze,
        Step::Silver,
        Step::AgainToBronze,
        Step::AgainSilver,
    ];

    /// The run's `--until`.
    fn until(self) -> &'static str {
        match self {
            Step::Produce => "produce",
            Step::Bronze | Step::AgainToBronze => "bronze",
            Step::Silver | Step::AgainSilver => "silver",
        }
    }
}

/// Each stage's throughput on its own, on a fresh `lake`: `run --until produce` (the source
/// files onto the topics), then `--no-produce --until bronze`, then `--no-produce --until
/// silver` (a first load), each stage's wall seconds from its run's report; then the same files
/// again (`--resend --until bronze`) and silver alone on them, every row a duplicate (the issue's
/// "second delivery through silver"). In `run --all` the stages overlap on the cores, so the
/// seconds per table and stage of the main table are longer by the clock than the stage's own
/// work.
fn stages_alone(exe: &Path, repo: &Path, data: &Path, lake: &Path) -> Result<Figures> {
    fresh(lake)?;
    let report = lake.with_extension("json");
    let mut figures = Figures::default();
    for step in Step::ALL {
        let mut cmd = framework(exe, repo, lake);
        cmd.args([
            "run",
            "--all",
            "--simulate",
            "--until",
            step.until(),
            "--data",
        ])
        .arg(data)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null());
        match step {
            Step::Produce => {}
            Step::AgainToBronze => {
                cmd.arg("--resend");
            }
            Step::Bronze | Step::Silver | Step::AgainSilver => {
                cmd.arg("--no-produce");
            }
        }
        run(&mut cmd)?;
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
        // The first phase is the stage's own (its checks come after).
        let seconds = json["phases"][0][1]
            .as_f64()
            .with_context(|| format!("no phase in {}", report.display()))?;
        match step {
            Step::Produce => {
                figures.rows = Figures::from_report(&json, 0.0, "rows_read").rows;
                figures.produce_s = seconds;
            }
            Step::Bronze => figures.bronze_s = seconds,
            Step::Silver => figures.silver_s = seconds,
            Step::AgainToBronze => {}
            Step::AgainSilver => figures.silver_again_s = seconds,
        }
    }
    fresh(lake)?;
    Ok(figures)
}

/// The Python peer on a fresh `lake`, once per data folder in turn.
fn run_peer(
    python: &Path,
    repo: &Path,
    deliveries: [&Path; 3],
    lake: &Path,
) -> Result<Vec<Figures>> {
    fresh(lake)?;
    let mut out = Vec::new();
    for data in deliveries {
        let started = Instant::now();
        let mut peer = Command::new(python);
        peer.arg(repo.join("bench/peer_pandas.py"))
            .arg("--simulate")
            .arg("--data")
            .arg(data)
            .arg("--lake")
            .arg(lake);
        let result = output(&mut peer, false).context("running the Python peer")?;
        if !result.status.success() {
            bail!("peer failed: {}", String::from_utf8_lossy(&result.stderr));
        }
        let wall = started.elapsed().as_secs_f64();
        let json = last_json(&result.stdout)?;
        let mut figures = Figures::from_report(&json, wall, "rows");
        figures.peak_mib = json["peak_rss_mb"].as_f64().unwrap_or(0.0);
        out.push(figures);
    }
    Ok(out)
}

/// `--pii`: encryption per million values, then `run --all` with and without PII.
fn pii(exe: &Path, repo: &Path, args: &Args) -> Result<()> {
    use framework::pii::PiiMode;
    use framework::pii::keyset::{Keyset, RootKey};
    let (root, _) = RootKey::generate();
    let mut keyset = Keyset::new("bench");
    keyset.add_key("bench", std::slice::from_ref(&root));
    let keys = keyset.unlock(Path::new("bench"), &[root])?;
    let values: Vec<String> = (0..1_000_000)
        .map(|i| format!("customer city {i:07}"))
        .collect();
    println!(
        "| mode | values | seconds | values/s | ns/value |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for mode in [PiiMode::Deterministic, PiiMode::Randomized] {
        let started = Instant::now();
        let mut bytes = 0;
        for v in &values {
            bytes += keys.encrypt("bench", mode, v.as_bytes())?.len();
        }
        let s = started.elapsed().as_secs_f64();
        std::hint::black_box(bytes);
        println!(
            "| {} (no cache) | {} | {s:.3} | {:.0} | {:.0} |",
            mode.name(),
            values.len(),
            values.len() as f64 / s,
            s * 1e9 / values.len() as f64
        );
    }
    // The idcards without their `pii:` entries.
    let plain = args.work.join("idcards-no-pii");
    fresh(&plain)?;
    std::fs::create_dir_all(&plain)?;
    let strip = regex::Regex::new(r"(?m)^pii:.*\n(?:[ \t]+.*\n)*")?;
    let olist = olist_idcards(repo);
    for entry in std::fs::read_dir(&olist)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let text = if path.extension().is_some_and(|e| e == "yaml") {
            strip.replace_all(&text, "").into_owned()
        } else {
            text
        };
        std::fs::write(plain.join(path.file_name().expect("a file")), text)?;
    }
    println!(
        "\n| data | run --all, PII on (s) | PII off (s) | cost |\n| --- | ---: | ---: | ---: |"
    );
    for scale in &args.scales {
        let (label, data) = data_for(exe, repo, &args.work, *scale)?;
        let mut best = [f64::MAX, f64::MAX];
        for _ in 0..2 {
            for (i, idcards) in [olist.clone(), plain.clone()].iter().enumerate() {
                let lake = args.work.join(format!("lake-pii-{scale}-{i}"));
                fresh(&lake)?;
                let mut cmd = Command::new(exe);
                cmd.arg("--idcards").arg(idcards);
                cmd.arg("--models").arg(repo.join("models"));
                cmd.arg("--expectations").arg(repo.join("expectations"));
                cmd.arg("--lake").arg(&lake);
                cmd.args(["run", "--all", "--data"]).arg(&data);
                cmd.stdout(Stdio::null());
                let started = Instant::now();
                run(&mut cmd)?;
                best[i] = best[i].min(started.elapsed().as_secs_f64());
                fresh(&lake)?;
            }
        }
        println!(
            "| {label} | {:.2} | {:.2} | {:+.1}% |",
            best[0],
            best[1],
            (best[0] / best[1] - 1.0) * 100.0
        );
    }
    Ok(())
}
