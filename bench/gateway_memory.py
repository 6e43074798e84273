"""Gateway memory under load: the server's resident memory and threads every 5 s while 16
clients post batches of 10 `orders` records, then 5 s after the load stops.

Usage: gateway_memory.py FRAMEWORK LAKE SECONDS [ROUTE [SERVE_ARGUMENT...]]
  FRAMEWORK  the framework binary; LAKE a lake loaded with the sample (`framework --lake LAKE
  run --all`), which the run changes (copy it to compare two binaries on the same start);
  ROUTE      default /ingest_fast/orders?wait=visible;
  SERVE_ARGUMENT  passed on to `framework serve` (e.g. --vacuum-retention-s 10).
Prints one line per sample: seconds, RSS MiB, the server's threads, records acknowledged, files
and MB under silver/orders and MB under the lake's bronze, silver and gold.
"""

import csv
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid

binary, lake, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
route = sys.argv[4] if len(sys.argv) > 4 else "/ingest_fast/orders?wait=visible"
serve_arguments = sys.argv[5:]
CLIENTS = 16
here = os.path.dirname(os.path.abspath(__file__))
orders = os.path.join(here, "..", "data", "olist_sample", "olist_orders_dataset.csv")
template = list(csv.DictReader(open(orders)))

server = subprocess.Popen(
    [binary, "--lake", lake, "serve", "--addr", "127.0.0.1:0", *serve_arguments],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    env=dict(os.environ, FRAMEWORK_GATEWAY_TOKEN="bench-token"),
)
line = server.stdout.readline().decode()
if "http://" not in line:
    server.kill()
    raise SystemExit(f"{binary} printed no address: {line!r}")
host, port = line.split("http://")[1].split()[0].split(":")


def status():
    """`<rss> MiB  threads <n>` of the server, from /proc."""
    fields = {}
    with open(f"/proc/{server.pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return f"{int(fields['VmRSS'][0]) // 1024} MiB  threads {fields['Threads'][0]}"


def on_disk():
    """Parquet files and MB under silver/orders, and MB under bronze, silver and gold."""
    def size(path):
        try:
            return os.path.getsize(path)
        except FileNotFoundError:  # vacuumed meanwhile
            return None

    def walk(*path):
        found = [
            size(os.path.join(root, name))
            for root, _, names in os.walk(os.path.join(lake, *path))
            for name in names
            if name.endswith(".parquet")
        ]
        found = [bytes for bytes in found if bytes is not None]
        return len(found), sum(found) / 1e6

    files, orders_mb = walk("silver", "orders")
    layers = "  ".join(f"{layer} {walk(layer)[1]:.0f} MB" for layer in ("bronze", "silver", "gold"))
    return f"silver/orders {files} files {orders_mb:.0f} MB  {layers}"


deadline = time.time() + seconds
acknowledged = [0]
errors = []


def client(n):
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    i = n * 1_000_000
    while time.time() < deadline:
        records = []
        for _ in range(10):
            row = dict(template[i % len(template)])
            row["order_id"] = uuid.uuid4().hex
            records.append(row)
            i += 1
        connection.request(
            "POST",
            route,
            body=json.dumps({"records": records}),
            headers={"Content-Type": "application/json", "Authorization": "Bearer bench-token"},
        )
        response = connection.getresponse()
        response.read()
        if response.status not in (200, 202):
            errors.append(response.status)
            return
        acknowledged[0] += len(records)


try:
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        print(f"{time.time() - started:5.0f} s  rss {status()}  records {acknowledged[0]}  "
              f"{on_disk()}", flush=True)
    time.sleep(5)
    print(f"5 s after the load: rss {status()}  {on_disk()}", flush=True)
    if errors:
        raise SystemExit(f"{route}: status {errors[0]}")
finally:
    server.kill()
    server.wait(30)
