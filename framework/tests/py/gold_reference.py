#!/usr/bin/env python3
"""Independent oracle for the five gold tables (spec: GOLD_SPEC.md, "Gold models: exact definitions").

Recomputes gold_daily_sales, gold_seller_performance, gold_customer_rfm, gold_product_analytics and
gold_delivery_performance straight from the Olist CSV files with plain loops and dicts (standard
library only, no SQL), so a Rust test can compare the SQL implementation with it row by row.

    python3 gold_reference.py --data DIR [--reference-date YYYY-MM-DD] > gold.json

Output: one JSON object {table: [rows]}, each row a {column: value} object, rows sorted by the
table's key. Integers as JSON integers; money, day averages and scores as strings with 2 decimals;
rates as strings with 4 decimals; dates as "YYYY-MM-DD"; null as null.

Arithmetic (spec, "Common terms"): money in integer cents, durations in integer seconds, scores as
integers; every average is the exact ratio of integer sums, rounded half away from zero once.
Exit status 2 (message on stderr) when a key occurs twice with different content: silver keeps one
row per key and the oracle must not guess which.
"""
import argparse
import csv
import json
import os
import sys
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal

# Silver keys (idcards/*.yaml): file -> key columns.
FILES = {
    "orders": ("olist_orders_dataset.csv", ["order_id"]),
    "items": ("olist_order_items_dataset.csv", ["order_id", "order_item_id"]),
    "reviews": ("olist_order_reviews_dataset.csv", ["review_id", "order_id"]),
    "customers": ("olist_customers_dataset.csv", ["customer_id"]),
    "products": ("olist_products_dataset.csv", ["product_id"]),
    "sellers": ("olist_sellers_dataset.csv", ["seller_id"]),
    "translation": ("product_category_name_translation.csv", ["product_category_name"]),
}


def fail(msg):
    print(f"gold_reference: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- loading (silver: one row per key)
def load(data_dir, name):
    """Rows of one CSV as {key: row}; empty cells are None; identical duplicates collapse."""
    path, key_cols = FILES[name]
    rows = {}
    # utf-8-sig drops the translation file's BOM; newline="" keeps quoted embedded newlines.
    with open(os.path.join(data_dir, path), encoding="utf-8-sig", newline="") as f:
        for rec in csv.DictReader(f):
            row = {k: (v if v != "" else None) for k, v in rec.items()}
            key = tuple(row[c] for c in key_cols)
            if key in rows and rows[key] != row:
                fail(f"{path}: key {key_cols}={key} occurs twice with different content")
            rows[key] = row
    return {k[0] if len(k) == 1 else k: v for k, v in rows.items()}


def ts(s):
    """Timestamp 'YYYY-MM-DD HH:MM:SS' (naive UTC) or None."""
    if s is None:
        return None
    try:
        return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        fail(f"unexpected timestamp {s!r}")


def cents(s):
    """DECIMAL(18,2) money ('199.0' allowed) as integer cents; refuses more than 2 decimals."""
    d = Decimal(s) * 100
    if d != d.to_integral_value():
        fail(f"money value {s!r} has more than 2 decimals")
    return int(d)


# ---------------------------------------------------------------- exact rounding and formatting
def ratio(num, den, places):
    """num/den rounded half away from zero to `places` decimals, as a string; None if den == 0."""
    if den == 0:
        return None
    q, r = divmod(abs(num) * 10**places, den)
    if 2 * r >= den:
        q += 1
    sign = -1 if (num < 0) != (den < 0) and q else 1
    return f"{Decimal(sign * q).scaleb(-places):.{places}f}"


def money(c):
    """Integer cents as a DECIMAL(18,2) string."""
    return ratio(c, 100, 2)


def days(total_seconds, n):
    """Mean delivery days = sum(seconds) / (n * 86400), 2 decimals."""
    return ratio(total_seconds, n * 86400, 2)


def mean_score(scores):
    """Mean of the non-null review scores, 2 decimals; None over nothing."""
    s = [x for x in scores if x is not None]
    return ratio(sum(s), len(s), 2)


# ---------------------------------------------------------------- common terms
def prepare(data_dir, reference_date):
    t = {name: load(data_dir, name) for name in FILES}
    orders = {}
    for oid, o in t["orders"].items():
        cust = t["customers"].get(o["customer_id"]) or {}
        purchase, delivered = ts(o["order_purchase_timestamp"]), ts(o["order_delivered_customer_date"])
        estimated = ts(o["order_estimated_delivery_date"])
        orders[oid] = {
            "status": o["order_status"],
            "purchase": purchase,
            "customer_unique_id": cust.get("customer_unique_id"),
            "customer_state": cust.get("customer_state"),
            # delivery seconds: only where the delivered date is not null
            "seconds": None if delivered is None or purchase is None else
            int((delivered - purchase).total_seconds()),
            # on time compares dates only; unknown (None) if either date is missing
            "on_time": None if delivered is None or estimated is None else
            delivered.date() <= estimated.date(),
        }
    # Reviews per order: each (review_id, order_id) row is one review.
    reviews = defaultdict(list)
    for (rid, oid), r in t["reviews"].items():
        reviews[oid].append(((rid, oid), None if r["review_score"] is None else int(r["review_score"])))
    # Items of delivered orders (spec: delivered order = order_status 'delivered').
    items = []
    for (oid, _), it in t["items"].items():
        o = orders.get(oid)
        if o is None or o["status"] != "delivered":
            continue
        if o["purchase"] is None:
            fail(f"delivered order {oid} has items but no order_purchase_timestamp")
        price, freight = cents(it["price"]), cents(it["freight_value"])
        seller = t["sellers"].get(it["seller_id"]) or {}
        product = t["products"].get(it["product_id"]) or {}
        pt = product.get("product_category_name")
        english = (t["translation"].get(pt) or {}).get("product_category_name_english")
        items.append({
            "order_id": oid, "order": o, "seller_id": it["seller_id"],
            "seller_city": seller.get("seller_city"), "seller_state": seller.get("seller_state"),
            "category": english or pt or "unknown",
            "price": price, "revenue": price + freight,  # item revenue = price + freight_value
        })
    if reference_date is None:  # latest date(order_purchase_timestamp) over all orders
        reference_date = max(o["purchase"].date() for o in orders.values() if o["purchase"])
    return items, orders, reviews, reference_date


def review_scores(order_ids, reviews):
    """Scores of the distinct (review_id, order_id) reviews of a set of orders."""
    return [score for oid in order_ids for _, score in reviews.get(oid, [])]


def seconds_mean(order_ids, orders):
    secs = [orders[o]["seconds"] for o in order_ids if orders[o]["seconds"] is not None]
    return days(sum(secs), len(secs))


# ---------------------------------------------------------------- 1. gold_daily_sales
def daily_sales(items):
    g = defaultdict(lambda: {"orders": set(), "revenue": 0, "items": 0})
    for it in items:
        d = g[it["order"]["purchase"].date().isoformat()]
        d["orders"].add(it["order_id"])
        d["revenue"] += it["revenue"]
        d["items"] += 1
    return [{"order_date": k, "total_orders": len(d["orders"]), "total_revenue": money(d["revenue"]),
             "avg_order_value": ratio(d["revenue"], len(d["orders"]) * 100, 2),
             "total_items": d["items"]} for k, d in sorted(g.items())]


# ---------------------------------------------------------------- 2. gold_seller_performance
def seller_performance(items, orders, reviews):
    g = defaultdict(lambda: {"orders": set(), "revenue": 0, "city": None})
    for it in items:
        s = g[it["seller_id"]]
        s["orders"].add(it["order_id"])
        s["revenue"] += it["revenue"]
        s["city"] = it["seller_city"]
    return [{"seller_id": k, "seller_city": s["city"], "total_orders": len(s["orders"]),
             "total_revenue": money(s["revenue"]),
             "avg_review_score": mean_score(review_scores(s["orders"], reviews)),
             "avg_delivery_days": seconds_mean(s["orders"], orders)} for k, s in sorted(g.items())]


# ---------------------------------------------------------------- 3. gold_customer_rfm
def segment(recency, frequency, monetary_cents):
    """rfm_segment: first matching rule, in the spec's order."""
    if recency <= 30 and frequency >= 3 and monetary_cents >= 500_00:
        return "Champions"
    if frequency >= 3:
        return "Loyal Customers"
    if recency <= 30 and frequency < 3:
        return "Potential Loyalists"
    if recency > 90 and frequency >= 2:
        return "At Risk"
    if recency > 90:
        return "Hibernating"
    return "Others"


def customer_rfm(items, reference_date):
    g = defaultdict(lambda: {"orders": set(), "revenue": 0, "last": None})
    for it in items:
        c = g[it["order"]["customer_unique_id"]]
        c["orders"].add(it["order_id"])
        c["revenue"] += it["revenue"]
        d = it["order"]["purchase"].date()
        c["last"] = d if c["last"] is None else max(c["last"], d)
    rows = []
    for k, c in sorted(g.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        recency, frequency = (reference_date - c["last"]).days, len(c["orders"])
        rows.append({"customer_unique_id": k, "recency_days": recency, "frequency": frequency,
                     "monetary": money(c["revenue"]),
                     "rfm_segment": segment(recency, frequency, c["revenue"])})
    return rows


# ---------------------------------------------------------------- 4. gold_product_analytics
def product_analytics(items, reviews):
    g = defaultdict(lambda: {"orders": set(), "price": 0, "n": 0})
    for it in items:
        p = g[it["category"]]
        p["orders"].add(it["order_id"])
        p["price"] += it["price"]  # product revenue: price only, no freight
        p["n"] += 1
    return [{"product_category": k, "total_sold": p["n"], "total_revenue": money(p["price"]),
             "avg_price": ratio(p["price"], p["n"] * 100, 2),
             "avg_review_score": mean_score(review_scores(p["orders"], reviews))}
            for k, p in sorted(g.items())]


# ---------------------------------------------------------------- 5. gold_delivery_performance
def delivery_performance(items):
    # A delivery: distinct (order, seller) pair among items of delivered orders with a delivery date.
    deliveries = {}
    for it in items:
        if it["order"]["seconds"] is not None:
            deliveries[(it["order_id"], it["seller_id"])] = it
    g = defaultdict(lambda: {"n": 0, "seconds": 0, "on_time": 0})
    for it in deliveries.values():
        d = g[(it["seller_state"], it["order"]["customer_state"])]
        d["n"] += 1
        d["seconds"] += it["order"]["seconds"]  # mean over deliveries (each its order's days)
        d["on_time"] += 1 if it["order"]["on_time"] else 0  # unknown estimate counts as not on time
    rows = []
    for (ss, cs), d in sorted(g.items(), key=lambda kv: tuple((x is not None, x or "") for x in kv[0])):
        on_time = ratio(d["on_time"], d["n"], 4)
        rows.append({"seller_state": ss, "customer_state": cs, "total_deliveries": d["n"],
                     "avg_delivery_days": days(d["seconds"], d["n"]), "on_time_rate": on_time,
                     "late_rate": f"{Decimal(1) - Decimal(on_time):.4f}"})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory holding the Olist CSV files")
    ap.add_argument("--reference-date", type=date.fromisoformat, default=None,
                    help="recency reference date (default: latest purchase date over all orders)")
    args = ap.parse_args()
    items, orders, reviews, ref = prepare(args.data, args.reference_date)
    json.dump({
        "gold_daily_sales": daily_sales(items),
        "gold_seller_performance": seller_performance(items, orders, reviews),
        "gold_customer_rfm": customer_rfm(items, ref),
        "gold_product_analytics": product_analytics(items, reviews),
        "gold_delivery_performance": delivery_performance(items),
    }, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
