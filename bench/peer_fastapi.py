#!/usr/bin/env python3
"""Benchmark PEER for the gateway: the ingestion API a competent Python data engineer would
write with the usual tools, FastAPI on uvicorn, pyarrow and pandas for the batch, the `deltalake`
package for the bronze append and the silver MERGE, DuckDB for the gold SQL.

    python bench/peer_fastapi.py --lake DIR --manifest FILE --data DIR

DIR is a lake built by bench/peer_pandas.py (bronze and silver of every table) and
bench/peer_duckdb_gold.py (`--out DIR/gold`); FILE is `framework compile --manifest FILE`.
Prints `listening on http://127.0.0.1:PORT` once it accepts connections.

POST /ingest/{table} with {"records": [{column: text|null, ...}, ...]} (validated by a
Pydantic model) answers 200 once the records are visible in silver and gold:
  bronze  the records as an all-string Arrow table (pa.Table.from_pylist), typed with
          pyarrow.compute like bench/peer_pandas.py, `_ingestion_timestamp` now, offsets
          following the table's last one -> write_deltalake(mode="append")
  silver  pandas drop_duplicates on the key (last wins) -> DeltaTable.merge (update when
          newer, insert when new)
  gold    the five models on a fresh DuckDB connection over silver's current files
          (bench/peer_duckdb_gold.run_once), each written back with write_deltalake
One request per table at a time (a lock): concurrent delta-rs writers to one table conflict.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import uvicorn
from deltalake import DeltaTable, write_deltalake
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_duckdb_gold  # noqa: E402
import peer_pandas  # noqa: E402


class Batch(BaseModel):
    records: list[dict[str, str | None]]


def make_app(lake: str, models: list[dict], data: str) -> FastAPI:
    app = FastAPI()
    locks = {name: threading.Lock() for name in peer_pandas.TABLES}
    columns = {
        name: peer_pandas.csv_header(os.path.join(data, csv_file))
        for name, (csv_file, _, _) in peer_pandas.TABLES.items()
    }

    @app.post("/ingest/{table}")
    def ingest(table: str, batch: Batch) -> dict:
        if table not in peer_pandas.TABLES:
            raise HTTPException(404, f"no table {table}")
        _, key, types = peer_pandas.TABLES[table]
        names = columns[table]
        unknown = {k for r in batch.records for k in r} - set(names)
        if unknown:
            raise HTTPException(422, f"unknown fields {sorted(unknown)}")
        with locks[table]:
            started = time.perf_counter()
            state_path = os.path.join(lake, "_peer_bus", f"{table}.state.json")
            state = peer_pandas.read_state(state_path)
            first = state.get("bus_offset", 0)
            n = len(batch.records)
            raw = pa.Table.from_pylist(batch.records, schema=pa.schema([(c, pa.string()) for c in names]))
            now = time.time_ns() // 1000
            raw = raw.append_column("_ingestion_timestamp",
                                    pa.array(np.full(n, now), peer_pandas.UTC_US))
            raw = raw.append_column("_source_line", pa.array(np.arange(1, n + 1)))
            typed = peer_pandas.bronze_rows(raw, names, types, pa.array(np.arange(first, first + n)))
            bronze_path = os.path.join(lake, "bronze", table)
            write_deltalake(bronze_path, typed, mode="append", partition_by=["_ingestion_date"])
            state["bus_offset"] = first + n
            peer_pandas.write_state(state_path, state)

            df = typed.to_pandas(types_mapper=pd.ArrowDtype)
            df = df.sort_values(["_ingestion_timestamp", "_offset"], kind="stable")
            df = df.drop_duplicates(subset=key, keep="last")
            source = pa.Table.from_pandas(df, schema=typed.schema, preserve_index=False)
            silver_path = os.path.join(lake, "silver", table)
            predicate = " AND ".join(f"t.{c} = s.{c}" for c in key)
            merger = DeltaTable(silver_path).merge(
                source=source, predicate=predicate, source_alias="s", target_alias="t")
            if table not in peer_pandas.APPEND_ONLY:
                merger = merger.when_matched_update_all(
                    predicate="s._ingestion_timestamp > t._ingestion_timestamp")
            merger.when_not_matched_insert_all().execute()
            state["silver_offset"] = first + n
            peer_pandas.write_state(state_path, state)

            reading = [m for m in models if f"silver.{table}" in m.get("sources", [])]
            gold = peer_duckdb_gold.run_once(lake, models, os.path.join(lake, "gold")) if reading else {}
            return {
                "table": table,
                "records": n,
                "versions": {
                    "bronze": DeltaTable(bronze_path).version(),
                    "silver": DeltaTable(silver_path).version(),
                    "gold": sorted(gold.get("models", {})),
                },
                "seconds": time.perf_counter() - started,
            }

    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--data", required=True, help="the CSVs' folder (for the column names)")
    args = ap.parse_args()
    with open(args.manifest, encoding="utf-8") as f:
        models = json.load(f)["models"]
    app = make_app(args.lake, models, args.data)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)

    def announce():
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"listening on http://127.0.0.1:{port}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
