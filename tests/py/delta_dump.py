#!/usr/bin/env python3
"""Independent reader for the Rust tests: copy every Delta table of a lake into plain Parquet.

    python tests/py/delta_dump.py LAKE_DIR OUT_DIR

reads each Delta table under LAKE_DIR (any folder holding a _delta_log, at any depth) with the
`deltalake` PyPI package (not the Rust crate), writes its current rows to
OUT_DIR/<table path>.parquet with pyarrow, and prints the JSON list of the table paths found.
The test then compares those rows with what the framework reads, cell by cell.
"""
import json
import os
import sys

import pyarrow.parquet as pq
from deltalake import DeltaTable


def tables(lake: str):
    for root, dirs, _files in os.walk(lake):
        if "_delta_log" in dirs:
            yield os.path.relpath(root, lake)
            dirs.clear()  # a table's own folders hold no other table
        dirs[:] = sorted(d for d in dirs if not d.startswith("_"))


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    lake, out = sys.argv[1], sys.argv[2]
    found = []
    for table in tables(lake):
        rows = DeltaTable(os.path.join(lake, table)).to_pyarrow_table()
        target = os.path.join(out, table + ".parquet")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pq.write_table(rows, target)
        found.append(table)
    print(json.dumps(sorted(found)))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip interpreter teardown: deltalake's native thread pool can abort the process while it is
    # destroyed ("terminate called without an active exception") after the work is done.
    os._exit(code)
