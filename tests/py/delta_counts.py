#!/usr/bin/env python3
"""Independent reader for the Rust tests: count the rows of every Delta table in a lake.

    python tests/py/delta_counts.py LAKE_DIR
prints {"<layer>/<table>": rows, ...} for each LAKE_DIR/{bronze,silver,reject,quarantine,gold}/<table>
that has a _delta_log, read with the `deltalake` PyPI package (not the Rust crate).
"""
import json
import os
import sys

from deltalake import DeltaTable

LAYERS = ("bronze", "silver", "reject", "quarantine", "gold")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lake = sys.argv[1]
    counts = {}
    for layer in LAYERS:
        layer_dir = os.path.join(lake, layer)
        if not os.path.isdir(layer_dir):
            continue
        for table in sorted(os.listdir(layer_dir)):
            path = os.path.join(layer_dir, table)
            if os.path.isdir(os.path.join(path, "_delta_log")):
                counts[f"{layer}/{table}"] = DeltaTable(path).to_pyarrow_table().num_rows
    print(json.dumps(counts, sort_keys=True))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip interpreter teardown: deltalake's native thread pool can abort the process while it is
    # destroyed ("terminate called without an active exception") after the work is done.
    os._exit(code)
