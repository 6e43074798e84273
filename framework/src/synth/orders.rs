//! Orders and their customers.

use std::fmt::Write as _;
use std::path::Path;

use chrono::NaiveDate;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::places::{CITIES, Places, zip_in};
use super::util::{DAY, Row, csv_writer, hex_id, lognormal, push_ts, stream, weighted};

/// An order status, with the real shares of the Kaggle file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Delivered to the customer (~97%).
    Delivered,
    /// Handed to the carrier.
    Shipped,
    /// Canceled (some after approval, a few after shipping).
    Canceled,
    /// Product unavailable: never has items.
    Unavailable,
    /// Invoiced, not shipped yet.
    Invoiced,
    /// Being processed.
    Processing,
}

impl Status {
    const ALL: [Status; 6] = [
        Status::Delivered,
        Status::Shipped,
        Status::Canceled,
        Status::Unavailable,
        Status::Invoiced,
        Status::Processing,
    ];
    const WEIGHTS: [f64; 6] = [96478.0, 1107.0, 625.0, 609.0, 314.0, 301.0];

    /// The value written in `order_status`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Shipped => "shipped",
            Status::Canceled => "canceled",
            Status::Unavailable => "unavailable",
            Status::Invoiced => "invoiced",
            Status::Processing => "processing",
        }
    }
}

/// A generated order.
#[derive(Debug)]
pub(crate) struct Order {
    /// 32-hex order id.
    pub id: String,
    /// 32-hex customer id (one customer row per order).
    pub customer: String,
    /// Status.
    pub status: Status,
    /// Purchase timestamp (epoch seconds).
    pub purchase: i64,
    /// Payment approval.
    pub approved: Option<i64>,
    /// Handed to the carrier.
    pub carrier: Option<i64>,
    /// Delivered to the customer.
    pub delivered: Option<i64>,
    /// Estimated delivery (a midnight).
    pub estimated: i64,
}

impl Order {
    /// Whether the order has items (unavailable orders and a third of canceled ones have none).
    pub(crate) fn has_items(&self, rng: &mut ChaCha8Rng) -> bool {
        match self.status {
            Status::Unavailable => false,
            Status::Canceled => rng.random_bool(0.7),
            Status::Invoiced => rng.random_bool(0.99),
            _ => true,
        }
    }
}

/// Orders per month, Jan 2017 .. Aug 2018 (Kaggle), after a small burst in October 2016.
const MONTHS: [f64; 20] = [
    800.0, 1780.0, 2682.0, 2404.0, 3700.0, 3245.0, 4026.0, 4331.0, 4285.0, 4631.0, 7544.0, 5673.0,
    7269.0, 6728.0, 7211.0, 6939.0, 6873.0, 6167.0, 6292.0, 6512.0,
];

/// Orders per hour of the day (Kaggle).
const HOURS: [f64; 24] = [
    2394.0, 1170.0, 510.0, 272.0, 206.0, 188.0, 502.0, 1231.0, 2967.0, 4785.0, 6177.0, 6578.0,
    5995.0, 6518.0, 6569.0, 6454.0, 6675.0, 6150.0, 5769.0, 5982.0, 6193.0, 6217.0, 5816.0, 4123.0,
];

/// Epoch seconds of a midnight.
fn midnight(y: i32, m: u32, d: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |t| t.and_utc().timestamp())
}

/// A purchase timestamp following the real volume by month and hour.
struct Calendar {
    spans: Vec<(i64, i64)>,
    weights: Vec<f64>,
}

impl Calendar {
    fn new() -> Self {
        let mut spans = vec![(midnight(2016, 10, 3), 8)];
        let mut weights = vec![324.0];
        for (k, w) in MONTHS.iter().enumerate() {
            let (y, m) = (2017 + k as i32 / 12, 1 + k as u32 % 12);
            let start = midnight(y, m, 1);
            let next = if m == 12 {
                midnight(y + 1, 1, 1)
            } else {
                midnight(y, m + 1, 1)
            };
            spans.push((start, (next - start) / DAY));
            weights.push(*w);
        }
        Self { spans, weights }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> i64 {
        let (start, days) = self.spans[weighted(rng, &self.weights)];
        let day = rng.random_range(0..days.max(1));
        let hour = weighted(rng, &HOURS) as i64;
        start + day * DAY + hour * 3600 + rng.random_range(0..3600)
    }
}

/// A positive delay in seconds, log-normal around `median_days`.
fn delay(rng: &mut ChaCha8Rng, median_days: f64, sigma: f64, min_secs: i64) -> i64 {
    ((lognormal(rng, median_days, sigma) * DAY as f64) as i64).max(min_secs)
}

/// Draws one order's status and timeline.
fn order(rng: &mut ChaCha8Rng, cal: &Calendar) -> Order {
    let status = Status::ALL[weighted(rng, &Status::WEIGHTS)];
    let purchase = cal.draw(rng);
    let approve_median = if rng.random_bool(0.8) { 0.012 } else { 0.6 };
    let mut approved = Some(purchase + delay(rng, approve_median, 1.0, 30));
    let carrier_at = approved.unwrap_or(purchase) + delay(rng, 1.9, 0.8, 3600);
    let delivered_at = carrier_at + delay(rng, 7.5, 0.6, 9 * 3600);
    let est_days = (23.0 + 7.0 * super::util::normal(rng)).clamp(3.0, 60.0) as i64;
    let estimated = (purchase / DAY + est_days) * DAY;
    let (mut carrier, mut delivered) = (None, None);
    match status {
        Status::Delivered => {
            if rng.random_bool(0.00015) {
                approved = None;
            }
            carrier = Some(carrier_at);
            delivered = (!rng.random_bool(0.0001)).then_some(delivered_at);
        }
        Status::Shipped => carrier = Some(carrier_at),
        Status::Canceled => {
            if rng.random_bool(0.25) {
                approved = None;
            } else if rng.random_bool(0.12) {
                carrier = Some(carrier_at);
            }
        }
        Status::Unavailable | Status::Invoiced | Status::Processing => {}
    }
    Order {
        id: hex_id(rng),
        customer: hex_id(rng),
        status,
        purchase,
        approved,
        carrier,
        delivered,
        estimated,
    }
}

/// Generates `n` orders and writes `olist_orders_dataset.csv`.
pub(crate) fn orders(n: usize, seed: u64, out: &Path) -> std::io::Result<Vec<Order>> {
    let mut rng = stream(seed, 3);
    let cal = Calendar::new();
    let mut orders: Vec<Order> = (0..n).map(|_| order(&mut rng, &cal)).collect();
    // A few delivered orders lack their delivery date, however small the scale.
    let delivered: Vec<usize> = (0..n)
        .filter(|&i| orders[i].status == Status::Delivered)
        .collect();
    if delivered.len() > 1 && delivered.iter().all(|&i| orders[i].delivered.is_some()) {
        orders[delivered[rng.random_range(0..delivered.len())]].delivered = None;
    }

    let mut w = csv_writer(out, "olist_orders_dataset.csv")?;
    w.write_record([
        "order_id",
        "customer_id",
        "order_status",
        "order_purchase_timestamp",
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ])?;
    let mut row = Row::default();
    for o in &orders {
        row.clear();
        row.field(&o.id);
        row.field(&o.customer);
        row.field(o.status.name());
        push_ts(row.buf(), o.purchase);
        row.end();
        for t in [o.approved, o.carrier, o.delivered] {
            if let Some(t) = t {
                push_ts(row.buf(), t);
            }
            row.end();
        }
        push_ts(row.buf(), o.estimated);
        row.end();
        row.write_csv(&mut w)?;
    }
    w.flush()?;
    Ok(orders)
}

/// Writes `olist_customers_dataset.csv` (one row per order) and returns the customers' zips.
///
/// About 3.4% of the rows are repeat buyers: they reuse an earlier `customer_unique_id` and
/// its address.
pub(crate) fn customers(
    orders: &[Order],
    seed: u64,
    places: &Places,
    out: &Path,
) -> std::io::Result<Vec<(u32, usize)>> {
    let mut rng = stream(seed, 4);
    let mut people: Vec<(String, u32, usize)> = Vec::with_capacity(orders.len());
    let mut zips = Vec::with_capacity(orders.len());
    let mut w = csv_writer(out, "olist_customers_dataset.csv")?;
    w.write_record([
        "customer_id",
        "customer_unique_id",
        "customer_zip_code_prefix",
        "customer_city",
        "customer_state",
    ])?;
    let mut row = Row::default();
    for o in orders {
        let person = if !people.is_empty() && rng.random_bool(0.034) {
            rng.random_range(0..people.len())
        } else {
            let city = places.customer_city(&mut rng);
            people.push((hex_id(&mut rng), zip_in(&mut rng, city), city));
            people.len() - 1
        };
        let (uid, zip, city) = &people[person];
        row.clear();
        row.field(&o.customer);
        row.field(uid);
        let _ = write!(row.buf(), "{zip}");
        row.end();
        row.field(CITIES[*city].name);
        row.field(CITIES[*city].state);
        row.write_csv(&mut w)?;
        zips.push((*zip, *city));
    }
    w.flush()?;
    Ok(zips)
}
