#!/usr/bin/env python3
"""Benchmark PEER: the project's gold SQL models run on DuckDB against the same
silver Delta tables, so the Rust `framework` binary's gold time can be reported
as a ratio against it.

    python bench/peer_duckdb_gold.py --lake DIR --manifest FILE --out DIR [--repeat N]

FILE is written by `framework compile --manifest FILE`: {"models": [...]} in
dependency order, each with name, materialized, relation, sources and sql
(ephemeral models are already inlined as CTEs, so they are skipped here).

Steps, per run (fresh in-memory connection each run):
  setup    duckdb.connect(); SET TimeZone='UTC' (DataFusion is always UTC);
           SET integer_division=true (BIGINT / BIGINT truncates, as in DataFusion);
           every source `<layer>.<table>` -> the Parquet files of the Delta
           table's current version (DeltaTable(LAKE/<layer>/<table>).file_uris(),
           from the Delta log), exposed as CREATE VIEW <layer>.<table> AS
           SELECT * FROM read_parquet([...]): DuckDB's own Parquet reader scans
           them inside each model's query, as DataFusion does on our side. (A
           pyarrow dataset would not do: its filter pushdown fails on the
           string_view columns DataFusion writes.)
  view     CREATE VIEW <relation> AS <sql>             (not timed per model)
  table /  run <sql> -> Arrow table -> write_deltalake(OUT/<name>, "overwrite")
  incremental  (timed: query + write; incremental = full build), then
           CREATE TABLE <relation> from that Arrow table for later models (untimed)

Prints one JSON object on stdout (best run by total_s when --repeat N > 1):
  {"engine": "duckdb", "duckdb_version", "models": {name: {"seconds", "rows"}},
   "total_s", "setup_s"}
If a model fails in DuckDB, exits 1 naming the model and DuckDB's error.

Written against duckdb 2.0.1 (relation.to_arrow_table()) and deltalake 1.x.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import duckdb
from deltalake import DeltaTable, write_deltalake


class ModelError(Exception):
    pass


def run_once(lake: str, models: list[dict], out_dir: str) -> dict:
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute("SET integer_division=true")
    sources = sorted({s for m in models for s in m.get("sources", [])})
    for src in sources:
        layer, table = src.split(".", 1)
        files = [f.removeprefix("file://") for f in DeltaTable(os.path.join(lake, layer, table)).file_uris()]
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        con.execute(f"CREATE VIEW {layer}.{table} AS SELECT * FROM read_parquet([{listed}])")
    setup_s = time.perf_counter() - t0

    timings: dict[str, dict] = {}
    for m in models:
        kind, name, rel = m["materialized"], m["name"], m["relation"]
        if kind == "ephemeral":
            continue
        if kind not in ("view", "table", "incremental"):
            raise ModelError(f"model {name}: unknown materialization {kind!r}")
        sql = m["sql"].strip().rstrip(";")
        schema = rel.split(".", 1)[0]
        try:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            if kind == "view":
                con.execute(f"CREATE VIEW {rel} AS {sql}")
                continue
            t1 = time.perf_counter()
            tbl = con.sql(sql).to_arrow_table()
            write_deltalake(os.path.join(out_dir, name), tbl, mode="overwrite")
            secs = time.perf_counter() - t1
            reg = f"__out_{name}"
            con.register(reg, tbl)
            con.execute(f"CREATE TABLE {rel} AS SELECT * FROM {reg}")
            con.unregister(reg)
        except duckdb.Error as e:
            raise ModelError(f"model {name} failed in DuckDB: {type(e).__name__}: {e}") from e
        timings[name] = {"seconds": secs, "rows": tbl.num_rows}
        print(f"[duckdb] {name}: rows={tbl.num_rows} {secs:.3f}s", file=sys.stderr)
    con.close()
    total = sum(v["seconds"] for v in timings.values())
    return {"models": timings, "total_s": total, "setup_s": setup_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", required=True, help="lake root holding silver/<table> Delta tables")
    ap.add_argument("--manifest", required=True, help="JSON from `framework compile --manifest`")
    ap.add_argument("--out", required=True, help="folder for the gold Delta tables")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the best total is reported")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    with open(args.manifest, encoding="utf-8") as f:
        models = json.load(f)["models"]
    os.makedirs(args.out, exist_ok=True)

    best = None
    for _ in range(args.repeat):
        try:
            run = run_once(args.lake, models, args.out)
        except ModelError as e:
            print(f"[duckdb] {e}", file=sys.stderr)
            return 1
        if best is None or run["total_s"] < best["total_s"]:
            best = run

    print(
        json.dumps(
            {
                "engine": "duckdb",
                "duckdb_version": duckdb.__version__,
                "models": {
                    k: {"seconds": round(v["seconds"], 4), "rows": v["rows"]}
                    for k, v in best["models"].items()
                },
                "total_s": round(best["total_s"], 4),
                "setup_s": round(best["setup_s"], 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
