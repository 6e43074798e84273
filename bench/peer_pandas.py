#!/usr/bin/env python3
"""Benchmark PEER: the Olist produce -> bronze -> silver pipeline written the way a
competent Python data engineer would write it, vectorised end to end (no row
loop anywhere): pyarrow's CSV and JSON readers, pandas for the dedup, the
`deltalake` package for the Delta appends and the silver MERGE. The gold SQL runs
on DuckDB (bench/peer_duckdb_gold.py), timed separately by the bench.

    python bench/peer_pandas.py --data DIR --lake DIR [--tables orders,...] [--simulate]

Run it twice on the same lake for a second delivery: it keeps its bus offsets,
so the second run sends the files again, bronze appends only the new messages
and silver merges only the new bronze rows.

Stages, per table:
  produce  pyarrow.csv.read_csv (every column a string, empty -> null) ->
           with --simulate (seeded numpy): 5% of the rows late by 60-300 s,
           2% sent twice -> `_ingestion_timestamp`, `_source_line` ->
           DuckDB COPY ... (FORMAT json) into a new segment file
           <lake>/_peer_bus/<table>/<n>.jsonl (one JSON message per line)
  bronze   the segments past the stored one -> pyarrow.json.read_json
           (explicit all-string schema) -> typed with pyarrow.compute (cast,
           strptime) + metadata -> write_deltalake(mode="append",
           partition_by=["_ingestion_date"]); the new position is stored after
           the commit
  silver   the bronze rows past silver's stored offset (a pyarrow dataset
           filter) -> pandas sort by (_ingestion_timestamp, _offset) +
           drop_duplicates(key, keep="last") -> a first load is a plain
           write_deltalake; later loads MERGE on the key (update when newer,
           insert when new; APPEND tables: insert only)

Prints one JSON object on stdout:
  {"tables": {name: {"rows", "produce_s", "bronze_s", "silver_s", ...}}, "peak_rss_mb": ...}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.json as pa_json
from deltalake import DeltaTable, write_deltalake

# name -> (csv file, primary key, {column: type}); untyped columns are strings.
TS = "timestamp"
TABLES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "orders": (
        "olist_orders_dataset.csv",
        ["order_id"],
        {c: TS for c in ("order_purchase_timestamp", "order_approved_at",
                         "order_delivered_carrier_date", "order_delivered_customer_date",
                         "order_estimated_delivery_date")},
    ),
    "order_items": (
        "olist_order_items_dataset.csv",
        ["order_id", "order_item_id"],
        {"order_item_id": "int", "shipping_limit_date": TS, "price": "double",
         "freight_value": "double"},
    ),
    "customers": ("olist_customers_dataset.csv", ["customer_id"], {}),
    "products": (
        "olist_products_dataset.csv",
        ["product_id"],
        {c: "int" for c in ("product_name_lenght", "product_description_lenght",
                            "product_photos_qty", "product_weight_g", "product_length_cm",
                            "product_height_cm", "product_width_cm")},
    ),
    "sellers": ("olist_sellers_dataset.csv", ["seller_id"], {}),
    "payments": (
        "olist_order_payments_dataset.csv",
        ["order_id", "payment_sequential"],
        {"payment_sequential": "int", "payment_installments": "int", "payment_value": "double"},
    ),
    "reviews": (
        "olist_order_reviews_dataset.csv",
        ["review_id", "order_id"],
        {"review_score": "int", "review_creation_date": TS, "review_answer_timestamp": TS},
    ),
    "geolocation": (
        "olist_geolocation_dataset.csv",
        ["geolocation_zip_code_prefix", "geolocation_lat", "geolocation_lng",
         "geolocation_city", "geolocation_state"],
        {"geolocation_lat": "double", "geolocation_lng": "double"},
    ),
    "category_translation": (
        "product_category_name_translation.csv",
        ["product_category_name"],
        {},
    ),
}
APPEND_ONLY = {"geolocation"}

LATE_RATE = 0.05
DUP_RATE = 0.02
SEED = 42
UTC_US = pa.timestamp("us", tz="UTC")


def read_state(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def write_state(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------- produce
# A message as JSON: the row's cells, `_ingestion_timestamp` in RFC 3339, `_source_line`.
MESSAGE_SQL = ("SELECT * REPLACE (strftime(_ingestion_timestamp, '%Y-%m-%dT%H:%M:%S.%fZ') "
               "AS _ingestion_timestamp) FROM messages")


def delivery(csv_path: str, rng: np.random.Generator, simulate: bool) -> tuple[int, pa.Table]:
    """The CSV's rows (every cell a string) with `_ingestion_timestamp` and `_source_line`;
    with `simulate` (seeded numpy), 5% of them late by 60-300 s and 2% sent twice. Also returns
    the CSV's row count."""
    convert = pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in csv_header(csv_path)},
        strings_can_be_null=True,
    )
    try:
        table = pa_csv.read_csv(csv_path, convert_options=convert)
    except pa.ArrowInvalid:
        # A quoted cell over several lines (review comments) where pyarrow split the file into
        # blocks: read it again with the quote-aware, slower chunker, as one would on that error.
        table = pa_csv.read_csv(
            csv_path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=convert,
        )
    n = table.num_rows
    now_us = time.time_ns() // 1000
    stamps = np.full(n, now_us, dtype="int64")
    if simulate:
        late = rng.random(n) < LATE_RATE
        stamps[late] -= (rng.uniform(60, 300, late.sum()) * 1_000_000).astype("int64")
    table = table.append_column("_ingestion_timestamp", pa.array(stamps, UTC_US))
    table = table.append_column("_source_line", pa.array(np.arange(2, n + 2)))
    if simulate:
        copies = np.where(rng.random(n) < DUP_RATE, 2, 1)
        table = table.take(np.repeat(np.arange(n), copies))
    return n, table


def produce(csv_path: str, bus_dir: str, rng: np.random.Generator, simulate: bool) -> tuple[int, int]:
    n, table = delivery(csv_path, rng, simulate)
    # One segment file per delivery; DuckDB writes the JSON lines (pandas' to_json is 5x slower).
    os.makedirs(bus_dir, exist_ok=True)
    segment = os.path.join(bus_dir, f"{len(os.listdir(bus_dir)):08d}.jsonl")
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("messages", table)
    con.execute(f"COPY ({MESSAGE_SQL}) TO '{segment}' (FORMAT json)")
    return n, table.num_rows


# ---------------------------------------------------------------- bronze
def type_table(raw: pa.Table, types: dict[str, str]) -> pa.Table:
    columns = {}
    for name in raw.schema.names:
        col = raw[name]
        kind = types.get(name)
        if kind == "double":
            col = pc.cast(col, pa.float64())
        elif kind == "int":
            col = pc.cast(pc.cast(col, pa.float64()), pa.int64())
        elif kind == TS:
            col = pc.assume_timezone(pc.strptime(col, format="%Y-%m-%d %H:%M:%S", unit="us",
                                                 error_is_null=True), "UTC")
        columns[name] = col
    return pa.table(columns)


def message_schema(columns: list[str]) -> pa.Schema:
    """The schema messages are read with: every cell a string, then the metadata."""
    return pa.schema([(c, pa.string()) for c in columns]
                     + [("_ingestion_timestamp", pa.string()), ("_source_line", pa.int64())])


def read_messages(source, columns: list[str]) -> pa.Table:
    """JSON lines (a path or a buffer) read with `message_schema`; an unknown field is an error."""
    return pa_json.read_json(
        source,
        parse_options=pa_json.ParseOptions(explicit_schema=message_schema(columns),
                                           unexpected_field_behavior="error"),
    )


def bronze_rows(raw: pa.Table, columns: list[str], types: dict, offsets: pa.Array,
                partitions: pa.Array | None = None) -> pa.Table:
    """Messages as bronze rows: typed cells, then the metadata (`_partition` when given)."""
    typed = type_table(raw.select(columns), types)
    stamps = pc.cast(raw["_ingestion_timestamp"], UTC_US)
    typed = typed.append_column("_ingestion_timestamp", stamps)
    typed = typed.append_column(
        "_bronze_ingested_at", pa.array(np.full(raw.num_rows, time.time_ns() // 1000), UTC_US))
    if partitions is not None:
        typed = typed.append_column("_partition", partitions)
    typed = typed.append_column("_offset", offsets)
    typed = typed.append_column("_source_line", raw["_source_line"])
    return typed.append_column(
        "_ingestion_date", pc.cast(pc.cast(stamps, pa.timestamp("us")), pa.date32()))


def bronze(bus_dir: str, state: dict, table_path: str, columns: list[str], types: dict) -> int:
    done = state.get("bus_segments", 0)
    first_offset = state.get("bus_offset", 0)
    segments = sorted(os.listdir(bus_dir))[done:]
    if not segments:
        return 0
    raw = pa.concat_tables(
        read_messages(os.path.join(bus_dir, segment), columns) for segment in segments
    )
    n = raw.num_rows
    typed = bronze_rows(raw, columns, types, pa.array(np.arange(first_offset, first_offset + n)))
    write_deltalake(table_path, typed, mode="append", partition_by=["_ingestion_date"])
    state["bus_segments"] = done + len(segments)
    state["bus_offset"] = first_offset + n
    return n


# ---------------------------------------------------------------- silver
def silver(bronze_path: str, silver_path: str, key: list[str], append_only: bool,
           state: dict) -> int:
    done = state.get("silver_offset", 0)
    bronze_dt = DeltaTable(bronze_path)
    new = bronze_dt.to_pyarrow_dataset().to_table(filter=ds.field("_offset") >= done)
    if new.num_rows == 0:
        return 0
    end = pc.max(new["_offset"]).as_py() + 1
    df = new.to_pandas(types_mapper=pd.ArrowDtype)
    df = df.sort_values(["_ingestion_timestamp", "_offset"], kind="stable")
    df = df.drop_duplicates(subset=key, keep="last")
    src = pa.Table.from_pandas(df, schema=new.schema, preserve_index=False)
    if not DeltaTable.is_deltatable(silver_path):
        write_deltalake(silver_path, src, mode="error")
    else:
        predicate = " AND ".join(f"t.{c} = s.{c}" for c in key)
        merger = DeltaTable(silver_path).merge(
            source=src, predicate=predicate, source_alias="s", target_alias="t"
        )
        if not append_only:
            merger = merger.when_matched_update_all(
                predicate="s._ingestion_timestamp > t._ingestion_timestamp"
            )
        merger.when_not_matched_insert_all().execute()
    state["silver_offset"] = end
    return len(df)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder holding the Olist CSVs")
    ap.add_argument("--lake", required=True, help="lake root (created if missing)")
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--simulate", action="store_true", help="late and duplicate messages")
    args = ap.parse_args()

    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        ap.error(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(TABLES)}")

    bus_dir = os.path.join(args.lake, "_peer_bus")
    os.makedirs(bus_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    out: dict[str, dict] = {}
    for name in names:
        csv_file, key, types = TABLES[name]
        bus_path = os.path.join(bus_dir, name)
        state_path = os.path.join(bus_dir, f"{name}.state.json")
        bronze_path = os.path.join(args.lake, "bronze", name)
        silver_path = os.path.join(args.lake, "silver", name)
        state = read_state(state_path)

        t0 = time.perf_counter()
        rows, messages = produce(os.path.join(args.data, csv_file), bus_path, rng, args.simulate)
        t1 = time.perf_counter()
        columns = csv_header(os.path.join(args.data, csv_file))
        bronze_rows = bronze(bus_path, state, bronze_path, columns, types)
        write_state(state_path, state)
        t2 = time.perf_counter()
        silver_rows = silver(bronze_path, silver_path, key, name in APPEND_ONLY, state)
        write_state(state_path, state)
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


def csv_header(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [c.strip().strip('"') for c in f.readline().rstrip("\r\n").split(",")]


if __name__ == "__main__":
    sys.exit(main())
