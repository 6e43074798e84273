//! The closing summary of a run.

use comfy_table::{Table as Grid, presets::UTF8_FULL_CONDENSED};

/// What happened to one table in a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    /// Source records read by the producer.
    pub rows_read: u64,
    /// Messages put on the topic (duplicates included).
    pub produced: u64,
    /// Messages bronze consumed in this run.
    pub consumed: u64,
    /// Rows appended to bronze in this run.
    pub bronze: u64,
    /// Messages rejected in this run.
    pub rejected: u64,
    /// Rows quarantined in this run.
    pub quarantined: u64,
    /// Rows dropped by `drop` expectations in this run.
    pub dropped: u64,
    /// Warnings of `warn` expectations in this run.
    pub warnings: u64,
    /// Rows in silver after the run.
    pub silver: u64,
    pub produce_s: f64,
    pub bronze_s: f64,
    pub silver_s: f64,
    /// Why the source file was not produced (already ingested unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce_skipped: Option<String>,
}

/// A table of the reports, for the terminal.
pub fn render_summary(reports: &[TableReport]) -> String {
    let mut grid = Grid::new();
    grid.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "table",
        "read",
        "produced",
        "bronze +",
        "rejected",
        "quarantined",
        "dropped",
        "warnings",
        "silver rows",
        "produce s",
        "bronze s",
        "silver s",
    ]);
    let mut total = TableReport {
        table: "total".into(),
        ..TableReport::default()
    };
    for r in reports {
        grid.add_row(row(r));
        total.rows_read += r.rows_read;
        total.produced += r.produced;
        total.bronze += r.bronze;
        total.rejected += r.rejected;
        total.quarantined += r.quarantined;
        total.dropped += r.dropped;
        total.warnings += r.warnings;
        total.silver += r.silver;
        total.produce_s += r.produce_s;
        total.bronze_s += r.bronze_s;
        total.silver_s += r.silver_s;
    }
    if reports.len() > 1 {
        grid.add_row(row(&total));
    }
    grid.to_string()
}

fn row(r: &TableReport) -> Vec<String> {
    vec![
        r.table.clone(),
        r.rows_read.to_string(),
        r.produced.to_string(),
        r.bronze.to_string(),
        r.rejected.to_string(),
        r.quarantined.to_string(),
        r.dropped.to_string(),
        r.warnings.to_string(),
        r.silver.to_string(),
        format!("{:.2}", r.produce_s),
        format!("{:.2}", r.bronze_s),
        format!("{:.2}", r.silver_s),
    ]
}

/// Peak resident memory of this process so far, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
