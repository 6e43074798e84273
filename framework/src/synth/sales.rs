//! Order items and payments.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::catalog::{Product, Seller};
use super::orders::Order;
use super::util::{
    DAY, Row, create, csv_writer, lognormal, push_money2, push_pd_money, push_ts, skewed, stream,
    weighted, write_quoted_header,
};

/// Orders with 1, 2, ... 21 items (Kaggle: 98,666 orders, 112,650 items, mean 1.14).
#[rustfmt::skip]
const ITEM_COUNTS: [f64; 21] = [
    88863.0, 7516.0, 1322.0, 505.0, 204.0, 198.0, 22.0, 8.0, 3.0, 8.0, 4.0, 5.0, 1.0, 2.0, 2.0,
    0.0, 0.0, 0.0, 0.0, 2.0, 1.0,
];

/// Credit-card installments 1..=24 (weights from the sample).
#[rustfmt::skip]
const INSTALLMENTS: [f64; 24] = [
    832.0, 319.0, 294.0, 228.0, 172.0, 120.0, 35.0, 131.0, 26.0, 150.0, 1.0, 4.0, 2.0, 1.0, 3.0,
    0.5, 0.5, 1.0, 0.0, 1.0, 0.2, 0.0, 0.0, 0.5,
];

/// Single payment types (credit_card, boleto, voucher, debit_card) with the real shares.
const PAY_TYPES: [(&str, f64); 4] = [
    ("credit_card", 75.5),
    ("boleto", 19.9),
    ("voucher", 3.2),
    ("debit_card", 1.5),
];

/// One order item before writing.
struct Item {
    order: usize,
    item_no: u32,
    product: usize,
    seller: usize,
    limit: i64,
    price: u64,
    freight: u64,
}

/// Generates the items of every order and writes `olist_order_items_dataset.csv` (sorted by
/// order id, like the original). Returns each order's total (price + freight) in cents, `None`
/// for an order without items, and the number of items written.
pub(crate) fn items(
    orders: &[Order],
    products: &[Product],
    sellers: &[Seller],
    seed: u64,
    out: &Path,
) -> std::io::Result<(Vec<Option<u64>>, u64)> {
    let mut rng = stream(seed, 5);
    let mut items = Vec::with_capacity(orders.len() * 115 / 100);
    let mut totals = Vec::with_capacity(orders.len());
    for (oi, o) in orders.iter().enumerate() {
        if !o.has_items(&mut rng) {
            totals.push(None);
            continue;
        }
        let count = weighted(&mut rng, &ITEM_COUNTS) as u32 + 1;
        let same = rng.random_bool(0.7);
        let limit = o.approved.unwrap_or(o.purchase)
            + 2 * DAY
            + (lognormal(&mut rng, 4.0, 0.5) * DAY as f64) as i64;
        let mut total = 0;
        let mut product = skewed(&mut rng, products.len(), 2.2);
        for item_no in 1..=count {
            if item_no > 1 && !same {
                product = skewed(&mut rng, products.len(), 2.2);
            }
            let p = &products[product];
            let seller = if rng.random_bool(0.03) {
                skewed(&mut rng, sellers.len(), 2.0)
            } else {
                p.seller
            };
            let freight = freight(&mut rng, p.weight);
            total += p.price + freight;
            items.push(Item {
                order: oi,
                item_no,
                product,
                seller,
                limit,
                price: p.price,
                freight,
            });
        }
        totals.push(Some(total));
    }
    items.sort_by(|a, b| (&orders[a.order].id, a.item_no).cmp(&(&orders[b.order].id, b.item_no)));

    let mut w = csv_writer(out, "olist_order_items_dataset.csv")?;
    w.write_record([
        "order_id",
        "order_item_id",
        "product_id",
        "seller_id",
        "shipping_limit_date",
        "price",
        "freight_value",
    ])?;
    let mut row = Row::default();
    for it in &items {
        row.clear();
        row.field(&orders[it.order].id);
        let _ = write!(row.buf(), "{}", it.item_no);
        row.end();
        row.field(&products[it.product].id);
        row.field(&sellers[it.seller].id);
        push_ts(row.buf(), it.limit);
        row.end();
        push_pd_money(row.buf(), it.price);
        row.end();
        push_pd_money(row.buf(), it.freight);
        row.end();
        row.write_csv(&mut w)?;
    }
    w.flush()?;
    Ok((totals, items.len() as u64))
}

/// Freight in cents: ~R$ 16 median, heavier parcels cost more, a few free shipments.
fn freight(rng: &mut ChaCha8Rng, weight_g: u32) -> u64 {
    if rng.random_bool(0.0034) {
        return 0;
    }
    let heavy = 1.0 + (f64::from(weight_g) / 10_000.0).min(4.0);
    let reais = (lognormal(rng, 15.0, 0.45) * heavy).clamp(1.0, 410.0);
    (reais * 100.0).round() as u64
}

/// Generates the payments of every order and writes `olist_order_payments_dataset.csv`
/// (partial quoting: header quoted, order ids starting with a digit quoted). Returns the
/// number of rows.
pub(crate) fn payments(
    orders: &[Order],
    totals: &[Option<u64>],
    seed: u64,
    out: &Path,
) -> std::io::Result<u64> {
    let mut rng = stream(seed, 6);
    let mut w = create(out, "olist_order_payments_dataset.csv")?;
    write_quoted_header(
        &mut w,
        &[
            "order_id",
            "payment_sequential",
            "payment_type",
            "payment_installments",
            "payment_value",
        ],
    )?;
    let type_w: Vec<f64> = PAY_TYPES.iter().map(|(_, w)| *w).collect();
    let mut row = Row::default();
    let mut rows = 0;
    let mut parts: Vec<(&str, u64)> = Vec::new();
    for (o, total) in orders.iter().zip(totals) {
        let total = total.unwrap_or_else(|| (lognormal(&mut rng, 100.0, 0.9) * 100.0) as u64);
        parts.clear();
        if rng.random_bool(0.972) {
            parts.push((PAY_TYPES[weighted(&mut rng, &type_w)].0, total));
        } else {
            // Vouchers cover part of the bill, a credit card (usually) the rest.
            let n = weighted(&mut rng, &[75.0, 12.0, 5.0, 3.0, 2.0, 1.0, 1.0, 1.0]) + 2;
            let mut left = total;
            for _ in 1..n {
                let v = if left > 2 {
                    rng.random_range(1..=left / 2)
                } else {
                    0
                };
                let kind = if rng.random_bool(0.88) {
                    "voucher"
                } else {
                    "credit_card"
                };
                parts.push((kind, v));
                left -= v;
            }
            let last = if rng.random_bool(0.8) {
                "credit_card"
            } else {
                "voucher"
            };
            parts.insert(0, (last, left));
        }
        for (seq, (kind, cents)) in parts.iter().enumerate() {
            let installments = if *kind == "credit_card" {
                weighted(&mut rng, &INSTALLMENTS) + 1
            } else {
                1
            };
            row.clear();
            row.field(&o.id);
            let _ = write!(row.buf(), "{}", seq + 1);
            row.end();
            row.field(kind);
            let _ = write!(row.buf(), "{installments}");
            row.end();
            push_money2(row.buf(), *cents);
            row.end();
            row.write_partial(&mut w, &[0, 2])?;
            rows += 1;
        }
    }
    w.flush()?;
    Ok(rows)
}
