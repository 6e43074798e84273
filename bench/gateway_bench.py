"""Gateway benchmark: latency and throughput of /ingest, /ingest_fast and ?wait=visible.

Usage: gateway_bench.py CONFIG_JSON, where CONFIG_JSON is {"command": [framework, ..., --lake,
LAKE], "peer_command": [python, bench/peer_fastapi.py, ...], "orders_csv": CSV, "sequential":
30, "concurrent_s": 10, "clients": 16}.

For batches of 1 and 10 `orders` records (new order ids, the sample's other values), each
route sequentially (`sequential` requests) and with `clients` concurrent clients (for
`concurrent_s` seconds), each of these rows on a `framework serve` of its own over a fresh copy
of the lake the caller loaded, measures p50/p95/p99 latency and records per second, one
keep-alive connection per client (http.client). The
server's RSS is read from /proc at the start and the end of each concurrent run. Then the same
for the peer (bench/peer_fastapi.py: FastAPI + pandas + deltalake + DuckDB, on its own lake of the
same size), whose POST /ingest/orders answers once silver and gold show the records. Prints a
Markdown table and a JSON line.
"""

import csv
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

config = json.loads(sys.argv[1])
TOKEN = "bench-token"
ROUTES = [
    ("/ingest", "/ingest/orders"),
    ("/ingest_fast (durable)", "/ingest_fast/orders"),
    ("/ingest_fast?wait=visible", "/ingest_fast/orders?wait=visible"),
]
template = list(csv.DictReader(open(config["orders_csv"])))


def start(cmd, env):
    """Starts a server that prints `... http://HOST:PORT` on its first line of stdout and waits
    until it accepts connections."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = [None]
    reader = threading.Thread(target=lambda: line.__setitem__(0, process.stdout.readline().decode()))
    reader.start()
    reader.join(120)
    if not line[0] or "http://" not in line[0]:
        process.kill()
        raise SystemExit(f"{cmd[0]} printed no address within 120 s: {line[0]!r}")
    host, port = line[0].split("http://")[1].split()[0].split(":")
    return process, host, int(port)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def encoded_rows():
    """Each template row as JSON text, cut around its order id: encoded once, so that a body is
    these pieces joined with new ids (about 6 us for 10 records). The client runs on the same
    two cores as the server it measures, and encoding every body with json.dumps took it about
    6.6 CPU-s in a 10 s load of 16 clients, against about 4 with the bodies ready: CPU the
    server did not have. Alternated on 2026-12-07 (batches of 10, 16 clients, durable): 26 683
    and 27 230 records/s with json.dumps, 28 935 and 32 988 with this."""
    pieces = []
    for row in template:
        row = dict(row, order_id="\0")
        before, after = json.dumps(row).split('"\\u0000"')
        pieces.append((before + '"', '"' + after))
    return pieces


ENCODED = encoded_rows()
# Order ids: this run's prefix and a count shared by every client (unique across the run).
RUN = uuid.uuid4().hex[:16]
IDS = itertools.count()


def body(n, counter):
    records = []
    for _ in range(n):
        before, after = ENCODED[next(counter) % len(ENCODED)]
        records.append(f"{before}{RUN}{next(IDS):016x}{after}")
    return ('{"records": [' + ", ".join(records) + "]}").encode()


class Client:
    def __init__(self, host, port):
        self.connection = http.client.HTTPConnection(host, port, timeout=300)

    def post(self, path, payload):
        started = time.perf_counter()
        self.connection.request(
            "POST",
            path,
            body=payload,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {TOKEN}",
                "Idempotency-Key": uuid.uuid4().hex,
            },
        )
        response = self.connection.getresponse()
        response.read()
        if response.status not in (200, 202):
            raise SystemExit(f"{path}: status {response.status}")
        return time.perf_counter() - started


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


def counter_from(start):
    n = start
    while True:
        yield n
        n += 1


def sequential(host, port, path, size):
    client = Client(host, port)
    counter = counter_from(0)
    latencies = []
    started = time.perf_counter()
    for _ in range(config["sequential"]):
        latencies.append(client.post(path, body(size, counter)))
    wall = time.perf_counter() - started
    return latencies, len(latencies) * size / wall


def concurrent(host, port, pid, path, size):
    latencies = []
    lock = threading.Lock()
    deadline = time.perf_counter() + config["concurrent_s"]
    errors = []

    def run(n):
        try:
            client = Client(host, port)
            counter = counter_from(n * 1_000_000)
            while time.perf_counter() < deadline:
                elapsed = client.post(path, body(size, counter))
                with lock:
                    latencies.append(elapsed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    rss_before = rss_mib(pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(config["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{path}: {errors[0]}")
    return latencies, len(latencies) * size / wall, (rss_before, rss_mib(pid))


def on_fresh_lake(cmd):
    """`cmd` with its `--lake` folder replaced by a fresh copy of it (`<lake>-run`). Each row
    starts from the lake as the caller loaded it, so that every route and the peer are measured
    on the same lake size: run one after the other on one lake, 16 clients on /ingest_fast
    alone appended about 200 000 records in 10 s, and the rows after them (?wait=visible, whose
    refresh merges silver and rebuilds gold) ran on a lake hundreds of times larger."""
    at = cmd.index("--lake") + 1
    copy = cmd[at].rstrip("/") + "-run"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(cmd[at], copy, symlinks=True)
    return cmd[:at] + [copy] + cmd[at + 1:]


def measure(cmd, env, routes, warm_up):
    """Each route, batch size and mode on a server of its own over a fresh copy of the lake."""
    rows = []
    for size in (1, 10):
        for name, path in routes:
            for mode in ("sequential", f"{config['clients']} clients"):
                process, host, port = start(on_fresh_lake(cmd), env)
                try:
                    # Warm-up: the lanes and a first refresh (the peer: its imports and first
                    # query).
                    Client(host, port).post(warm_up, body(1, counter_from(0)))
                    if mode == "sequential":
                        latencies, rate = sequential(host, port, path, size)
                        rss = None
                    else:
                        latencies, rate, rss = concurrent(host, port, process.pid, path, size)
                    rows.append((name, size, mode, latencies, rate, rss))
                finally:
                    process.kill()
                    process.wait(30)
    return rows


rows = []
env = dict(os.environ, FRAMEWORK_GATEWAY_TOKEN=TOKEN)
cmd = config["command"] + ["serve", "--addr", "127.0.0.1:0", "--max-ingests", "256"]
rows += measure(cmd, env, ROUTES, "/ingest_fast/orders?wait=visible")
if config.get("peer_command"):
    rows += measure(config["peer_command"], dict(os.environ),
                    [("peer: FastAPI + pandas + deltalake + DuckDB", "/ingest/orders")],
                    "/ingest/orders")

print("| route | batch | clients | requests | p50 ms | p95 ms | p99 ms | records/s | server RSS MiB (start -> end) |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
out = []
for name, size, mode, latencies, rate, rss in rows:
    p = [percentile(latencies, q) for q in (50, 95, 99)]
    memory = f"{rss[0]:.0f} -> {rss[1]:.0f}" if rss else ""
    print(f"| {name} | {size} | {mode} | {len(latencies)} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} | {rate:.0f} | {memory} |")
    out.append({"route": name, "batch": size, "mode": mode, "requests": len(latencies),
                "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2], "records_per_s": rate, "rss_mib": rss})
print(json.dumps(out))
