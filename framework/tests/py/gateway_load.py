"""Load on the gateway, with SIGKILLs, then an audit of the lake.

Usage: gateway_load.py CONFIG_JSON

CONFIG_JSON: {"command": [framework, --idcards, ..., --lake, LAKE], "lake": LAKE, "token": T,
"sample_orders": CSV, "clients": 32, "load_s": 30, "kills": 10, "serve_args": [...]}

Starts `framework serve` (the command plus `serve --addr 127.0.0.1:0` and `serve_args`), then `clients` threads
send `orders` batches of 1 to 10 records for `load_s` seconds to /ingest_fast (durable ack),
/ingest_fast?wait=visible and /ingest, each request with its own Idempotency-Key; about one
record in eight has a timestamp that is not one (bronze rejects it). Then the server is killed
with SIGKILL `kills` times, at random moments under the same load, and restarted. A request that
gets no answer (connection refused or reset, a 5xx) is sent again with the same key and body
until it is answered. At the end one record is sent with wait=visible, so that everything
acknowledged is in silver, and the lake is read with the Python `deltalake` package (not the
framework): every acknowledged good record is in bronze and silver exactly once, every bad one in
the reject table exactly once, and no other generated record is anywhere. Prints a JSON summary;
exits 1 with the differences when the audit fails.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

config = json.loads(sys.argv[1])
TOKEN = config["token"]
LAKE = config["lake"]
rng = random.Random(7)


class Server:
    """The framework serve child process; `base` is its current address."""

    def __init__(self):
        self.lock = threading.Lock()
        self.process = None
        self.base = None
        self.log = open(os.path.join(LAKE, "..", "serve.log"), "ab")

    def start(self):
        cmd = config["command"] + ["serve", "--addr", "127.0.0.1:0"] + config.get("serve_args", [])
        env = dict(os.environ, FRAMEWORK_GATEWAY_TOKEN=TOKEN)
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = [None]

        def read():
            line[0] = process.stdout.readline().decode()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        if not line[0] or "http://" not in line[0]:
            process.kill()
            raise SystemExit(f"framework serve printed no address within 60 s: {line[0]!r}")
        base = next(w for w in line[0].split() if w.startswith("http://"))
        with self.lock:
            self.process, self.base = process, base

    def kill(self):
        with self.lock:
            process, self.base = self.process, None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def address(self):
        with self.lock:
            return self.base


server = Server()


def post(path, body, key):
    """One attempt: (status, json body) or None when there was no answer."""
    base = server.address()
    if base is None:
        return None
    request = urllib.request.Request(
        base + path,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {TOKEN}",
            "Idempotency-Key": key,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        payload = e.read()
        if e.code >= 500 or e.code == 429:
            return None
        raise SystemExit(f"{path}: {e.code} {payload[:500]!r}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def record(bad):
    order_id = uuid.uuid4().hex
    return {
        "order_id": order_id,
        "customer_id": uuid.uuid4().hex,
        "order_status": "delivered",
        "order_purchase_timestamp": "not a time" if bad else "2018-03-01 10:00:00",
        "order_approved_at": None,
        "order_delivered_carrier_date": None,
        "order_delivered_customer_date": None,
        "order_estimated_delivery_date": "2018-03-20 00:00:00",
    }


def send(path, records, deadline):
    """Sends until answered (same key, same body); returns (status, body, attempts)."""
    key = uuid.uuid4().hex
    body = json.dumps({"records": records}).encode()
    attempts = 0
    while True:
        attempts += 1
        answer = post(path, body, key)
        if answer is not None:
            return answer[0], answer[1], attempts
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no answer within the deadline after {attempts} attempts")
        time.sleep(0.05)


PATHS = ["/ingest_fast/orders", "/ingest_fast/orders?wait=visible", "/ingest/orders"]
stop = threading.Event()
lock = threading.Lock()
sent = {}  # order_id -> "good" | "bad"
placed = {}  # order_id -> (route, attempts, the answer's offset): told with a problem
stats = {p: {"requests": 0, "records": 0, "retried": 0, "replayed": 0} for p in PATHS}
latencies = {p: [] for p in PATHS}
failures = []


def client(n):
    local = random.Random(n)
    try:
        while not stop.is_set():
            path = PATHS[local.randrange(len(PATHS))]
            records = [record(local.random() < 0.125) for _ in range(local.randint(1, 10))]
            started = time.monotonic()
            status, body, attempts = send(path, records, time.monotonic() + 300)
            elapsed = time.monotonic() - started
            expected = 202 if path == "/ingest_fast/orders" else 200
            if status != expected:
                failures.append(f"{path}: status {status}, expected {expected}: {body}")
                return
            if len(body["offsets"]) != len(records):
                failures.append(f"{path}: {len(body['offsets'])} offsets for {len(records)} records")
                return
            with lock:
                for r, at in zip(records, body["offsets"]):
                    sent[r["order_id"]] = "bad" if r["order_purchase_timestamp"] == "not a time" else "good"
                    placed[r["order_id"]] = (path, attempts, at)
                s = stats[path]
                s["requests"] += 1
                s["records"] += len(records)
                s["retried"] += attempts > 1
                s["replayed"] += bool(body.get("replayed"))
                if attempts == 1:
                    latencies[path].append(elapsed)
            if status == 200:
                bad = {i for i, r in enumerate(records) if r["order_purchase_timestamp"] == "not a time"}
                listed = {x["index"] for x in body["rejected"]}
                if listed != bad:
                    failures.append(f"{path}: rejected {sorted(listed)}, expected {sorted(bad)}")
                    return
    except BaseException as e:  # noqa: BLE001 - reported by the main thread
        failures.append(f"client {n}: {e!r}")


server.start()
threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(config["clients"])]
for t in threads:
    t.start()
time.sleep(config["load_s"])
rss = []
kills = 0
for _ in range(config["kills"]):
    if failures:
        break
    time.sleep(rng.uniform(0.3, 2.0))
    server.kill()
    kills += 1
    time.sleep(rng.uniform(0.0, 0.3))
    server.start()
stop.set()
for t in threads:
    t.join(330)
if failures:
    server.kill()
    raise SystemExit("\n".join(failures[:10]))
# One last record, visible: everything acknowledged before it is in silver after it.
last = record(False)
status, body, _ = send("/ingest_fast/orders?wait=visible", [last], time.monotonic() + 300)
sent[last["order_id"]] = "good"
server.kill()

from deltalake import DeltaTable  # noqa: E402

bronze = DeltaTable(os.path.join(LAKE, "bronze/orders")).to_pyarrow_table(
    columns=["order_id", "_partition", "_offset"]
)
bronze_at = {}
for order_id, partition, offset in zip(
    *(bronze.column(c).to_pylist() for c in ["order_id", "_partition", "_offset"])
):
    bronze_at.setdefault(order_id, []).append((partition, offset))
silver = DeltaTable(os.path.join(LAKE, "silver/orders")).to_pyarrow_table(columns=["order_id"])
reject_path = os.path.join(LAKE, "reject/orders")
rejects = (
    DeltaTable(reject_path).to_pyarrow_table(columns=["_payload"]).column("_payload").to_pylist()
    if os.path.exists(reject_path)
    else []
)


def counts(values):
    out = {}
    for v in values:
        if v in sent:
            out[v] = out.get(v, 0) + 1
    return out


in_bronze = counts(bronze.column("order_id").to_pylist())
in_silver = counts(silver.column("order_id").to_pylist())
in_rejects = counts(json.loads(p).get("order_id") for p in rejects if p.startswith("{"))
problems = []
for order_id, kind in sent.items():
    want_bronze, want_rejects = (1, 0) if kind == "good" else (0, 1)
    got = (in_bronze.get(order_id, 0), in_silver.get(order_id, 0), in_rejects.get(order_id, 0))
    if got != (want_bronze, want_bronze, want_rejects):
        problems.append(
            f"{order_id} ({kind}): bronze {got[0]}, silver {got[1]}, rejects {got[2]}; "
            f"sent (route, attempts, answer) {placed.get(order_id)}, "
            f"in bronze at {bronze_at.get(order_id)}"
        )
import csv  # noqa: E402

sample = {row["order_id"] for row in csv.DictReader(open(config["sample_orders"]))}
stray = set(bronze.column("order_id").to_pylist()) - sample - set(sent)
for order_id in sorted(stray)[:20]:
    problems.append(f"{order_id}: in bronze, but neither a sample row nor an acknowledged record")
summary = {
    "records": len(sent),
    "good": sum(1 for k in sent.values() if k == "good"),
    "bad": sum(1 for k in sent.values() if k == "bad"),
    "kills": kills,
    "per_route": stats,
    "p50_ms": {
        p: round(sorted(v)[len(v) // 2] * 1000, 1) if v else None for p, v in latencies.items()
    },
    "problems": problems[:20],
    "problem_count": len(problems),
}
print(json.dumps(summary), flush=True)
if problems:
    # The gateway's own warnings, for the reader of a failed run (its log dies with the temp dir).
    server.log.flush()
    with open(os.path.join(LAKE, "..", "serve.log"), "rb") as f:
        lines = [l for l in f.read().decode(errors="replace").splitlines() if "WARN" in l or "ERROR" in l]
    print("serve.log, warnings and errors (last 40):", *lines[-40:], sep="\n", file=sys.stderr)
sys.stderr.flush()
# Straight out: the interpreter's teardown with client threads still parked (daemons) and the
# deltalake/pyarrow native threads alive sometimes aborts ("terminate called without an active
# exception") after the audit is done and printed.
os._exit(1 if problems else 0)
