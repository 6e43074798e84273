//! Small helpers shared by the table generators: seeded random streams, distributions, value
//! formatting in the styles of the Olist files, and a CSV line writer with partial quoting.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::{DateTime, Datelike, Timelike};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seconds in a day.
pub(crate) const DAY: i64 = 86_400;

/// One independent, deterministic random stream per table: `seed` mixed with a fixed `tag`.
pub(crate) fn stream(seed: u64, tag: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix(seed ^ splitmix(tag.wrapping_add(0x0715_7000))))
}

/// SplitMix64 finaliser: a cheap, well-mixing hash of a `u64`.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 32-character lowercase hexadecimal id (like every Olist id).
pub(crate) fn hex_id(rng: &mut ChaCha8Rng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// A standard normal draw (Box-Muller).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A log-normal draw with the given median and log-scale spread.
pub(crate) fn lognormal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Index drawn with probability proportional to `weights` (which must not all be zero).
pub(crate) fn weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

/// Index in `0..n` skewed towards small indices (popular sellers / products first).
pub(crate) fn skewed(rng: &mut ChaCha8Rng, n: usize, power: f64) -> usize {
    let i = (rng.random::<f64>().powf(power) * n as f64) as usize;
    i.min(n.saturating_sub(1))
}

/// Appends a timestamp as `YYYY-MM-DD HH:MM:SS` (seconds since the Unix epoch, naive UTC).
pub(crate) fn push_ts(buf: &mut String, secs: i64) {
    let dt = DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .naive_utc();
    let _ = write!(
        buf,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
}

/// Appends an amount of cents the way pandas writes a float: `199.0`, `54.9`, `8.54`.
pub(crate) fn push_pd_money(buf: &mut String, cents: u64) {
    let (whole, frac) = (cents / 100, cents % 100);
    let _ = if frac == 0 {
        write!(buf, "{whole}.0")
    } else if frac % 10 == 0 {
        write!(buf, "{whole}.{}", frac / 10)
    } else {
        write!(buf, "{whole}.{frac:02}")
    };
}

/// Appends an amount of cents with exactly two decimals: `30.00`, `102.66`.
pub(crate) fn push_money2(buf: &mut String, cents: u64) {
    let _ = write!(buf, "{}.{:02}", cents / 100, cents % 100);
}

/// Appends a float the way Python's `repr` does for ordinary magnitudes (`-23.0`, not `-23`).
pub(crate) fn push_py_float(buf: &mut String, x: f64) {
    let start = buf.len();
    let _ = write!(buf, "{x}");
    if !buf[start..].contains(['.', 'e', 'N', 'i']) {
        buf.push_str(".0");
    }
}

/// Creates `dir/name` behind a large buffer.
pub(crate) fn create(dir: &Path, name: &str) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(dir.join(name))?,
    ))
}

/// A CSV writer configured like the pandas-exported files: minimal quoting, `\n` terminator.
pub(crate) fn csv_writer(dir: &Path, name: &str) -> std::io::Result<csv::Writer<BufWriter<File>>> {
    Ok(csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(create(dir, name)?))
}

/// One CSV row assembled in a single reusable buffer (no allocation per field).
#[derive(Debug, Default)]
pub(crate) struct Row {
    buf: String,
    ends: Vec<usize>,
}

impl Row {
    /// Empties the row for reuse.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// The buffer the next field is being appended to; close it with [`Row::end`].
    pub(crate) fn buf(&mut self) -> &mut String {
        &mut self.buf
    }

    /// Closes the field appended since the previous call.
    pub(crate) fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// Appends a complete field.
    pub(crate) fn field(&mut self, value: &str) {
        self.buf.push_str(value);
        self.end();
    }

    /// The fields of the row.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let f = &self.buf[start..end];
            start = end;
            f
        })
    }

    /// Writes the row through a `csv` writer (minimal quoting).
    pub(crate) fn write_csv<W: Write>(&self, w: &mut csv::Writer<W>) -> csv::Result<()> {
        w.write_record(self.fields())
    }

    /// Writes the row with the partial quoting of the sellers / products / payments exporter:
    /// the fields whose index is in `text_cols` are quoted when they start with a digit, every
    /// field is quoted when it needs it (comma, quote, line break).
    pub(crate) fn write_partial<W: Write>(
        &self,
        w: &mut W,
        text_cols: &[usize],
    ) -> std::io::Result<()> {
        for (i, f) in self.fields().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            let digit = f.as_bytes().first().is_some_and(u8::is_ascii_digit);
            write_field(w, f, digit && text_cols.contains(&i))?;
        }
        w.write_all(b"\n")
    }
}

/// Writes one field, quoted when `force` is set or when its content requires it.
pub(crate) fn write_field<W: Write>(w: &mut W, f: &str, force: bool) -> std::io::Result<()> {
    if force || f.contains([',', '"', '\n', '\r']) {
        w.write_all(b"\"")?;
        w.write_all(f.replace('"', "\"\"").as_bytes())?;
        w.write_all(b"\"")
    } else {
        w.write_all(f.as_bytes())
    }
}

/// Writes a header line with every name quoted (the partial-quoting exporter's style).
pub(crate) fn write_quoted_header<W: Write>(w: &mut W, names: &[&str]) -> std::io::Result<()> {
    let line: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    w.write_all(line.join(",").as_bytes())?;
    w.write_all(b"\n")
}
