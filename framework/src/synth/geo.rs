//! Geolocation: points per zip-code prefix, with accented city spellings and ~1% exact
//! duplicate rows.

use std::fmt::Write as _;
use std::path::Path;

use rand::Rng;

use super::places::{CITIES, Places, zip_centre, zip_in};
use super::util::{Row, csv_writer, normal, push_py_float, stream};

/// Writes `n` rows of `olist_geolocation_dataset.csv`. About half the rows fall on zips that
/// customers and sellers use (`known`, as `(zip, city index)`), so joins on zip find matches.
pub(crate) fn geolocation(
    n: usize,
    known: &[(u32, usize)],
    seed: u64,
    places: &Places,
    out: &Path,
) -> std::io::Result<u64> {
    let mut rng = stream(seed, 8);
    let mut w = csv_writer(out, "olist_geolocation_dataset.csv")?;
    w.write_record([
        "geolocation_zip_code_prefix",
        "geolocation_lat",
        "geolocation_lng",
        "geolocation_city",
        "geolocation_state",
    ])?;
    let mut row = Row::default();
    // Recent rows, to repeat one byte for byte now and then.
    let mut recent: Vec<(u32, f64, f64, &str, &str)> = Vec::with_capacity(64);
    for i in 0..n {
        let (zip, lat, lng, city, state) = if !recent.is_empty() && rng.random_bool(0.01) {
            recent[rng.random_range(0..recent.len())]
        } else {
            let (zip, ci) = if !known.is_empty() && rng.random_bool(0.5) {
                known[rng.random_range(0..known.len())]
            } else {
                let ci = places.customer_city(&mut rng);
                (zip_in(&mut rng, ci), ci)
            };
            let c = &CITIES[ci];
            let (clat, clng) = zip_centre(ci, zip, seed);
            let (mut lat, mut lng) = (
                clat + 0.004 * normal(&mut rng),
                clng + 0.004 * normal(&mut rng),
            );
            if rng.random_bool(0.3) {
                lat = (lat * 1e6).round() / 1e6;
                lng = (lng * 1e6).round() / 1e6;
            }
            let name = if !c.accented.is_empty() && rng.random_bool(0.3) {
                c.accented
            } else {
                c.name
            };
            (zip, lat, lng, name, c.state)
        };
        if recent.len() < 64 {
            recent.push((zip, lat, lng, city, state));
        } else {
            recent[i % 64] = (zip, lat, lng, city, state);
        }
        row.clear();
        let _ = write!(row.buf(), "{zip}");
        row.end();
        push_py_float(row.buf(), lat);
        row.end();
        push_py_float(row.buf(), lng);
        row.end();
        row.field(city);
        row.field(state);
        row.write_csv(&mut w)?;
    }
    w.flush()?;
    Ok(n as u64)
}
