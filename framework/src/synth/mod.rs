//! Synthetic Olist data: the nine CSV files of the "Brazilian E-Commerce Public Dataset by
//! Olist" (Kaggle `olistbr/brazilian-ecommerce`), at any scale, for benchmarks and scale tests,
//! and the nested JSON feed `customer_profiles.jsonl` derived from the customers ([`profiles`]).
//!
//! The output mimics the real files byte for byte where it matters: file names, headers
//! (including the misspelt `product_name_lenght` / `product_description_lenght` and the UTF-8
//! BOM of the translation file), value formats and quirks:
//!
//! - orders, items, customers, reviews, geolocation are written like pandas writes them:
//!   minimal quoting, zip prefixes without leading zeros (`8775`), prices `199.0` / `54.9`;
//! - sellers, products, payments keep the original exporter's partial quoting: a quoted header,
//!   and text values starting with a digit quoted (`"13023"`, `"3442f8…"`), others bare;
//! - reviews carry accents, commas, quotes and line breaks in their comments, empty titles and
//!   messages, and a few review ids that occur twice;
//! - orders without items (unavailable, some canceled), empty delivery timestamps, products
//!   without category or in the two categories missing from the translation file.
//!
//! Scale 1.0 is about the Kaggle size (99,441 orders, ~1M geolocation rows); products and sellers
//! scale with a floor (200 and 50). The translation file is always the complete real one
//! (71 rows, copied from the dataset; Olist, CC BY-NC-SA 4.0). The same scale and seed always
//! produce byte-identical files.

mod catalog;
mod geo;
mod orders;
mod places;
pub mod profiles;
mod reviews;
mod sales;
mod util;

#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct GenerateStats {
    /// `(file name, data rows)` for every file, in writing order (header not counted).
    pub files: Vec<(String, u64)>,
}

/// Kaggle row counts at scale 1.0.
const ORDERS: f64 = 99_441.0;
const GEOLOCATION: f64 = 1_000_163.0;
const PRODUCTS: f64 = 32_951.0;
const SELLERS: f64 = 3_095.0;

/// `base * scale` rounded, at least `floor`.
fn scaled(base: f64, scale: f64, floor: usize) -> usize {
    ((base * scale).round() as usize).max(floor)
}

/// Generates the nine Olist CSV files and the profiles feed into `out` (created if missing) at `scale` (1.0 ≈ the
/// Kaggle dataset; any positive finite value, e.g. 0.01) from `seed`.
///
/// Every item points at an existing order, product and seller; every order at an existing
/// customer; every payment and review at an existing order.
///
/// # Errors
/// `InvalidInput` when `scale` is not a positive finite number; any IO error while writing.
pub fn generate(scale: f64, seed: u64, out: &Path) -> io::Result<GenerateStats> {
    if !scale.is_finite() || scale <= 0.0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("scale must be a positive finite number, got {scale}"),
        ));
    }
    std::fs::create_dir_all(out)?;
    let places = places::Places::new();
    let n_orders = scaled(ORDERS, scale, 1);
    let n_sellers = scaled(SELLERS, scale, 50);
    let n_products = scaled(PRODUCTS, scale, 200);
    let n_geo = scaled(GEOLOCATION, scale, 1);

    let mut stats = GenerateStats::default();
    let mut record = |name: &str, rows: u64| stats.files.push((name.to_owned(), rows));

    let sellers = catalog::sellers(n_sellers, seed, &places, out)?;
    record("olist_sellers_dataset.csv", sellers.len() as u64);
    let products = catalog::products(n_products, sellers.len(), seed, out)?;
    record("olist_products_dataset.csv", products.len() as u64);
    record(
        "product_category_name_translation.csv",
        catalog::translation(out)?,
    );

    let orders = orders::orders(n_orders, seed, out)?;
    record("olist_orders_dataset.csv", orders.len() as u64);
    let mut zips = orders::customers(&orders, seed, &places, out)?;
    record("olist_customers_dataset.csv", orders.len() as u64);
    record(
        profiles::FILE,
        profiles::derive(&out.join("olist_customers_dataset.csv"), seed, out)?,
    );

    let (totals, n_items) = sales::items(&orders, &products, &sellers, seed, out)?;
    record("olist_order_items_dataset.csv", n_items);
    record(
        "olist_order_payments_dataset.csv",
        sales::payments(&orders, &totals, seed, out)?,
    );
    record(
        "olist_order_reviews_dataset.csv",
        reviews::reviews(&orders, seed, out)?,
    );

    zips.extend(sellers.iter().map(|s| (s.zip, s.city)));
    record(
        "olist_geolocation_dataset.csv",
        geo::geolocation(n_geo, &zips, seed, &places, out)?,
    );
    Ok(stats)
}
