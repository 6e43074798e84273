#!/usr/bin/env python3
"""Benchmark PEER on a real Kafka broker: the Olist produce -> bronze pipeline written the
way a competent Python data engineer would write it: vectorised where the data is, batched
where the Kafka client is (confluent-kafka, i.e. librdkafka, the client our engine uses too),
so `framework run --bus kafka://...` can be reported as a ratio against it on the same broker.

    python bench/peer_kafka.py --data DIR --lake DIR --bootstrap HOST:PORT [--tables ...]

Stages, per table (message format, late and duplicate rates, typing and bronze layout as
bench/peer_pandas.py):
  produce  create the topic (the idcard's partition count) -> pyarrow.csv.read_csv (every
           column a string) -> seeded numpy: 5% late by 60-300 s, 2% sent twice -> DuckDB
           renders each row's JSON message and key (primary key cells joined by "|") in one
           query -> confluent_kafka.Producer.produce per message (idempotent, linger 20 ms,
           batches of 10,000, as ours) -> flush()
  bronze   confluent_kafka.Consumer in a consumer group from the earliest offset,
           consume(10,000) at a time (fetch.wait.max.ms 10, as ours), until it has read as many messages as produce sent
           (Tansu 0.6 reports stale end offsets, so the end is counted, not asked for) -> per
           --batch messages: the values as JSON lines -> pyarrow.json.read_json (explicit
           all-string schema) -> typed with pyarrow.compute (peer_pandas.type_table) +
           metadata -> write_deltalake(mode="append", partition_by=["_ingestion_date"]);
           offsets committed to the group after each write

Topics are named <prefix><table> (default prefix "peer_raw_"), so the peer does not share
topics with the framework on the same broker; a topic that already exists is refused (start
from a fresh broker, or pass another --topic-prefix).

Prints one JSON object on stdout:
  {"tables": {name: {"rows", "messages", "produce_s", "bronze_s", ...}}, "peak_rss_mb": ...}
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
import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from deltalake import write_deltalake

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_pandas import (  # noqa: E402
    MESSAGE_SQL, SEED, TABLES, bronze_rows, csv_header, delivery, read_messages,
)

# Partitions per topic, as in the idcards (idcards/*.yaml, topic.partitions).
PARTITIONS = {name: 3 for name in TABLES} | {"sellers": 1, "category_translation": 1}
# How long a broker request may take before the peer gives up.
REQUEST_TIMEOUT_S = 30


# ---------------------------------------------------------------- produce
def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
    try:
        future.result(timeout=REQUEST_TIMEOUT_S)
    except KafkaException as e:
        if "TOPIC_ALREADY_EXISTS" in str(e):
            raise SystemExit(
                f"topic {topic} already exists: start from a fresh broker or pass another --topic-prefix"
            ) from None
        raise


def messages(csv_path: str, key: list[str], rng: np.random.Generator) -> tuple[int, pa.Table]:
    """The CSV's rows as (key, value) messages, late and duplicated as the simulation says."""
    n, table = delivery(csv_path, rng, simulate=True)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("messages", table)
    keys = ", ".join(f'"{k}"' for k in key)
    rendered = con.sql(
        f"SELECT concat_ws('|', {keys}) AS key, to_json(m) AS value FROM ({MESSAGE_SQL}) m"
    ).to_arrow_table()
    return n, rendered


def produce(producer: Producer, topic: str, rendered: pa.Table) -> int:
    keys = rendered["key"].to_pylist()
    values = rendered["value"].to_pylist()
    for i, (k, v) in enumerate(zip(keys, values)):
        while True:
            try:
                producer.produce(topic, value=v, key=k)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(REQUEST_TIMEOUT_S)
    if left:
        raise RuntimeError(f"{topic}: {left} messages not delivered within {REQUEST_TIMEOUT_S} s")
    return len(values)


# ---------------------------------------------------------------- bronze
def write_bronze(
    values: list[bytes], partitions: list[int], offsets: list[int], columns: list[str],
    types: dict, table_path: str,
) -> None:
    raw = read_messages(pa.BufferReader(b"\n".join(values)), columns)
    typed = bronze_rows(raw, columns, types, pa.array(offsets, pa.int64()),
                        pa.array(partitions, pa.int32()))
    write_deltalake(table_path, typed, mode="append", partition_by=["_ingestion_date"])


def bronze(
    bootstrap: str, topic: str, group: str, expected: int, columns: list[str], types: dict,
    table_path: str, batch: int, stall_s: float,
) -> tuple[int, int]:
    """Consumes `expected` messages of `topic` into bronze; returns (messages, Delta writes)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_uncommitted",
        # The same broker tuning as ours: Tansu holds each fetch for the whole wait even with
        # data ready (at the 500 ms default, reading is about 5x slower).
        "fetch.wait.max.ms": 10,
    })
    consumer.subscribe([topic])
    values: list[bytes] = []
    partitions: list[int] = []
    offsets: list[int] = []
    read = writes = 0
    last_message = time.perf_counter()
    try:
        while read < expected:
            polled = consumer.consume(num_messages=min(10_000, batch - len(values)), timeout=0.5)
            fetched = [m for m in polled if m.error() is None]
            for m in polled:
                if m.error() is not None and not m.error().retriable():
                    raise RuntimeError(f"{topic}: {m.error()}")
            if not fetched:
                if time.perf_counter() - last_message > stall_s:
                    raise RuntimeError(
                        f"{topic}: read {read} of {expected} messages, then nothing for {stall_s:.0f} s"
                    )
                continue
            last_message = time.perf_counter()
            values.extend(m.value() for m in fetched)
            partitions.extend(m.partition() for m in fetched)
            offsets.extend(m.offset() for m in fetched)
            read += len(fetched)
            if len(values) >= batch or read >= expected:
                write_bronze(values, partitions, offsets, columns, types, table_path)
                consumer.commit(asynchronous=False)
                writes += 1
                values, partitions, offsets = [], [], []
    finally:
        consumer.close()
    return read, writes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder holding the Olist CSVs")
    ap.add_argument("--lake", required=True, help="lake root (created if missing)")
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port")
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    ap.add_argument("--topic-prefix", default="peer_raw_")
    ap.add_argument("--batch", type=int, default=100_000, help="messages per bronze write")
    ap.add_argument(
        "--stall-s", type=float, default=60.0, help="fail when no message arrives for this long"
    )
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()

    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        ap.error(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(TABLES)}")

    os.makedirs(args.lake, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": REQUEST_TIMEOUT_S * 1000,
    })

    out: dict[str, dict] = {}
    for name in names:
        csv_file, key, types = TABLES[name]
        csv_path = os.path.join(args.data, csv_file)
        topic = f"{args.topic_prefix}{name}"
        bronze_path = os.path.join(args.lake, "bronze", name)

        t0 = time.perf_counter()
        create_topic(args.bootstrap, topic, PARTITIONS[name])
        rows, rendered = messages(csv_path, key, rng)
        sent = produce(producer, topic, rendered)
        t1 = time.perf_counter()
        consumed, writes = bronze(
            args.bootstrap,
            topic,
            f"{args.topic_prefix}bronze_{name}",
            sent,
            csv_header(csv_path),
            types,
            bronze_path,
            args.batch,
            args.stall_s,
        )
        t2 = time.perf_counter()
        if consumed != sent:
            raise RuntimeError(f"{topic}: sent {sent} messages, read {consumed}")

        out[name] = {
            "rows": rows,
            "messages": sent,
            "consumed": consumed,
            "bronze_writes": writes,
            "produce_s": round(t1 - t0, 4),
            "bronze_s": round(t2 - t1, 4),
        }
        print(
            f"[peer-kafka] {name}: rows={rows} messages={sent} produce={t1 - t0:.3f}s "
            f"bronze={t2 - t1:.3f}s",
            file=sys.stderr,
        )

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tables": out, "peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
