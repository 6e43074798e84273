#!/usr/bin/env python3
"""Benchmark PEER: the Olist produce -> bronze -> silver pipeline done "the usual
Python way" (pandas + the `deltalake` PyPI package), so the Rust `framework`
binary's speed can be reported as a ratio against it.

    python bench/peer_pandas.py --data DIR --lake DIR [--tables orders,order_items,...]

Stages, per table:
  produce  pandas.read_csv(dtype=str) -> iterrows -> one JSON message per row
           (empty cells -> null, plus "_ingestion_timestamp"; seeded: 5% late by
           60-300 s, 2% sent twice) appended as a line to <lake>/_peer_bus/<topic>.jsonl
  bronze   json.loads each new line -> DataFrame -> typed columns + metadata ->
           write_deltalake(mode="append", partition_by=["_ingestion_date"])
  silver   DeltaTable(bronze).to_pandas() -> sort by _ingestion_timestamp ->
           drop_duplicates(key, keep="last") -> MERGE on the key into silver
           (update when newer, insert when new; geolocation: insert only)

Prints one JSON object on stdout:
  {"tables": {name: {"rows", "produce_s", "bronze_s", "silver_s", ...}}, "peak_rss_mb": ...}

Written against deltalake 1.x (write_deltalake/merge take Arrow-exportable data;
a pandas frame is passed as a pyarrow Table without its index).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

# name -> (csv file, primary key, encoding)
TABLES: dict[str, tuple[str, list[str], str]] = {
    "orders": ("olist_orders_dataset.csv", ["order_id"], "utf-8"),
    "order_items": ("olist_order_items_dataset.csv", ["order_id", "order_item_id"], "utf-8"),
    "customers": ("olist_customers_dataset.csv", ["customer_id"], "utf-8"),
    "products": ("olist_products_dataset.csv", ["product_id"], "utf-8"),
    "sellers": ("olist_sellers_dataset.csv", ["seller_id"], "utf-8"),
    "payments": ("olist_order_payments_dataset.csv", ["order_id", "payment_sequential"], "utf-8"),
    "reviews": ("olist_order_reviews_dataset.csv", ["review_id", "order_id"], "utf-8"),
    # key = all 5 columns: the table is append-only (insert rows not yet in silver)
    "geolocation": (
        "olist_geolocation_dataset.csv",
        [
            "geolocation_zip_code_prefix",
            "geolocation_lat",
            "geolocation_lng",
            "geolocation_city",
            "geolocation_state",
        ],
        "utf-8",
    ),
    "category_translation": (
        "product_category_name_translation.csv",
        ["product_category_name"],
        "utf-8-sig",
    ),
}
APPEND_ONLY = {"geolocation"}

FLOAT_COLS = {"price", "freight_value", "payment_value", "geolocation_lat", "geolocation_lng"}
INT_COLS = {
    "payment_installments",
    "payment_sequential",
    "order_item_id",
    "review_score",
    # products' numeric columns, with the original misspelt headers kept as-is
    "product_name_lenght",
    "product_description_lenght",
    "product_photos_qty",
    "product_weight_g",
    "product_length_cm",
    "product_height_cm",
    "product_width_cm",
}

LATE_RATE = 0.05
DUP_RATE = 0.02
SEED = 42

META_COLS = ("_ingestion_timestamp", "_bronze_ingested_at", "_offset", "_ingestion_date")


def is_timestamp_col(name: str) -> bool:
    if name in META_COLS:
        return False
    if "zip" in name or "prefix" in name:
        return False
    return any(t in name for t in ("timestamp", "_date", "_at", "date"))


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- produce
def produce(csv_path: str, encoding: str, bus_path: str, rng: random.Random) -> tuple[int, int]:
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding=encoding)
    sent = 0
    with open(bus_path, "a", encoding="utf-8") as bus:
        for _, row in df.iterrows():
            msg = {k: (None if v == "" else v) for k, v in row.to_dict().items()}
            ts = datetime.now(timezone.utc)
            if rng.random() < LATE_RATE:
                ts -= timedelta(seconds=rng.uniform(60, 300))
            msg["_ingestion_timestamp"] = rfc3339(ts)
            line = json.dumps(msg, ensure_ascii=False)
            copies = 2 if rng.random() < DUP_RATE else 1
            for _ in range(copies):
                bus.write(line + "\n")
                sent += 1
    return len(df), sent


# ---------------------------------------------------------------- bronze
def type_columns(df: pd.DataFrame) -> pd.DataFrame:
    for col in df.columns:
        if col in FLOAT_COLS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif col in INT_COLS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        elif is_timestamp_col(col):
            df[col] = pd.to_datetime(df[col], format="%Y-%m-%d %H:%M:%S", errors="coerce").astype(
                "datetime64[us]"
            )
    return df


def bronze(bus_path: str, offset_path: str, table_path: str) -> int:
    start = 0
    if os.path.exists(offset_path):
        with open(offset_path) as f:
            start = int(f.read().strip() or 0)
    records = []
    offsets = []
    with open(bus_path, encoding="utf-8") as bus:
        for i, line in enumerate(bus):
            if i < start:
                continue
            records.append(json.loads(line))
            offsets.append(i)
    if not records:
        return 0
    df = pd.DataFrame.from_records(records)
    df = type_columns(df)
    ts = pd.to_datetime(df["_ingestion_timestamp"], utc=True, format="ISO8601")
    df["_ingestion_timestamp"] = ts.astype("datetime64[us, UTC]")
    df["_bronze_ingested_at"] = pd.Timestamp.now(tz="UTC").as_unit("us")
    df["_offset"] = pd.Series(offsets, dtype="int64")
    df["_ingestion_date"] = ts.dt.strftime("%Y-%m-%d").astype(object)
    write_deltalake(
        table_path,
        pa.Table.from_pandas(df, preserve_index=False),
        mode="append",
        partition_by=["_ingestion_date"],
    )
    with open(offset_path, "w") as f:
        f.write(str(offsets[-1] + 1))
    return len(df)


# ---------------------------------------------------------------- silver
def silver(bronze_path: str, silver_path: str, key: list[str], append_only: bool) -> int:
    bronze_dt = DeltaTable(bronze_path)
    df = bronze_dt.to_pandas()
    df = df.sort_values(["_ingestion_timestamp", "_offset"], kind="mergesort")
    df = df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    # to_pandas() turns nullable int64 columns into float64 (NaN): rebuild the
    # Arrow source with bronze's schema so silver keeps int64 like bronze.
    schema = pa.schema(bronze_dt.schema().to_arrow())  # arro3 schema -> pyarrow
    src = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    if not DeltaTable.is_deltatable(silver_path):
        write_deltalake(silver_path, src, mode="error")
        return len(df)
    predicate = " AND ".join(f"t.{c} = s.{c}" for c in key)
    merger = DeltaTable(silver_path).merge(
        source=src, predicate=predicate, source_alias="s", target_alias="t"
    )
    if not append_only:
        merger = merger.when_matched_update_all(
            predicate="s._ingestion_timestamp > t._ingestion_timestamp"
        )
    merger.when_not_matched_insert_all().execute()
    return len(df)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder holding the Olist CSVs")
    ap.add_argument("--lake", required=True, help="lake root (created if missing)")
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()

    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        ap.error(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(TABLES)}")

    bus_dir = os.path.join(args.lake, "_peer_bus")
    os.makedirs(bus_dir, exist_ok=True)
    rng = random.Random(args.seed)

    out: dict[str, dict] = {}
    for name in names:
        csv_file, key, encoding = TABLES[name]
        bus_path = os.path.join(bus_dir, f"{name}.jsonl")
        offset_path = os.path.join(bus_dir, f"{name}.offset")
        bronze_path = os.path.join(args.lake, "bronze", name)
        silver_path = os.path.join(args.lake, "silver", name)

        t0 = time.perf_counter()
        rows, messages = produce(os.path.join(args.data, csv_file), encoding, bus_path, rng)
        t1 = time.perf_counter()
        bronze_rows = bronze(bus_path, offset_path, bronze_path)
        t2 = time.perf_counter()
        silver_rows = silver(bronze_path, silver_path, key, name in APPEND_ONLY)
        t3 = time.perf_counter()

        out[name] = {
            "rows": rows,
            "produce_s": round(t1 - t0, 4),
            "bronze_s": round(t2 - t1, 4),
            "silver_s": round(t3 - t2, 4),
            "messages": messages,
            "bronze_rows": bronze_rows,
            "silver_source_rows": silver_rows,
        }
        print(
            f"[peer] {name}: rows={rows} produce={t1 - t0:.3f}s bronze={t2 - t1:.3f}s "
            f"silver={t3 - t2:.3f}s",
            file=sys.stderr,
        )

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tables": out, "peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
