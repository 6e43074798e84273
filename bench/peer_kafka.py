#!/usr/bin/env python3
"""Benchmark PEER on a real Kafka broker: the Olist produce -> bronze pipeline done
the seed's Python way (pandas + kafka-python + the `deltalake` PyPI package), so
`framework run --bus kafka://...` can be reported as a ratio against it on the
same broker.

    python bench/peer_kafka.py --data DIR --lake DIR --bootstrap HOST:PORT [--tables ...]

Stages, per table (messages, typing and bronze layout as bench/peer_pandas.py):
  produce  create the topic (KafkaAdminClient; the idcard's partition count) ->
           pandas.read_csv(dtype=str) -> iterrows -> one JSON message per row
           (empty cells -> null, plus "_ingestion_timestamp"; seeded: 5% late by
           60-300 s, 2% sent twice) -> KafkaProducer.send(topic, key=primary key
           cells joined by "|") per message, default producer settings; flush()
  bronze   KafkaConsumer in a consumer group, from the earliest offset, until it
           has read as many messages as produce sent (Tansu 0.6 reports stale end
           offsets, so the end is counted, not asked for) -> json.loads ->
           DataFrame -> typed columns + metadata ->
           write_deltalake(mode="append", partition_by=["_ingestion_date"]) per
           --batch messages; offsets committed to the group after each write

Topics are named <prefix><table> (default prefix "peer_raw_"), so the peer does not
share topics with the framework on the same broker; a topic that already exists is
refused (start from a fresh broker, or pass another --topic-prefix).

Prints one JSON object on stdout:
  {"tables": {name: {"rows", "messages", "produce_s", "bronze_s", ...}}, "peak_rss_mb": ...}
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
from deltalake import write_deltalake
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_pandas import DUP_RATE, LATE_RATE, SEED, TABLES, rfc3339, type_columns  # noqa: E402

# Partitions per topic, as in the idcards (idcards/*.yaml, topic.partitions).
PARTITIONS = {name: 3 for name in TABLES} | {"sellers": 1, "category_translation": 1}


# ---------------------------------------------------------------- produce
def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        raise SystemExit(
            f"topic {topic} already exists: start from a fresh broker or pass another --topic-prefix"
        ) from None
    finally:
        admin.close()


def produce(
    csv_path: str,
    encoding: str,
    key: list[str],
    producer: KafkaProducer,
    topic: str,
    rng: random.Random,
) -> tuple[int, int]:
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding=encoding)
    sent = 0
    for _, row in df.iterrows():
        msg = {k: (None if v == "" else v) for k, v in row.to_dict().items()}
        ts = datetime.now(timezone.utc)
        if rng.random() < LATE_RATE:
            ts -= timedelta(seconds=rng.uniform(60, 300))
        msg["_ingestion_timestamp"] = rfc3339(ts)
        value = json.dumps(msg, ensure_ascii=False).encode("utf-8")
        msg_key = "|".join(row[k] for k in key).encode("utf-8")
        copies = 2 if rng.random() < DUP_RATE else 1
        for _ in range(copies):
            producer.send(topic, key=msg_key, value=value)
            sent += 1
    producer.flush()
    return len(df), sent


# ---------------------------------------------------------------- bronze
def write_bronze(records: list[dict], offsets: list[int], table_path: str) -> int:
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
    return len(df)


def bronze(
    bootstrap: str, topic: str, group: str, expected: int, table_path: str, batch: int, stall_s: float
) -> tuple[int, int]:
    """Consumes `expected` messages of `topic` into bronze; returns (messages, Delta writes)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[dict] = []
    offsets: list[int] = []
    read = writes = 0
    last_message = time.perf_counter()
    try:
        while read < expected:
            polled = consumer.poll(timeout_ms=500, max_records=batch - len(records))
            if not polled:
                if time.perf_counter() - last_message > stall_s:
                    raise RuntimeError(
                        f"{topic}: read {read} of {expected} messages, then nothing for {stall_s:.0f} s"
                    )
                continue
            last_message = time.perf_counter()
            for messages in polled.values():
                for m in messages:
                    records.append(json.loads(m.value))
                    offsets.append(m.offset)
                    read += 1
            if len(records) >= batch or read >= expected:
                write_bronze(records, offsets, table_path)
                consumer.commit()
                writes += 1
                records, offsets = [], []
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
    rng = random.Random(args.seed)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)

    out: dict[str, dict] = {}
    for name in names:
        csv_file, key, encoding = TABLES[name]
        topic = f"{args.topic_prefix}{name}"
        bronze_path = os.path.join(args.lake, "bronze", name)

        t0 = time.perf_counter()
        create_topic(args.bootstrap, topic, PARTITIONS[name])
        rows, messages = produce(
            os.path.join(args.data, csv_file), encoding, key, producer, topic, rng
        )
        t1 = time.perf_counter()
        consumed, writes = bronze(
            args.bootstrap,
            topic,
            f"{args.topic_prefix}bronze_{name}",
            messages,
            bronze_path,
            args.batch,
            args.stall_s,
        )
        t2 = time.perf_counter()
        if consumed != messages:
            raise RuntimeError(f"{topic}: sent {messages} messages, read {consumed}")

        out[name] = {
            "rows": rows,
            "messages": messages,
            "consumed": consumed,
            "bronze_writes": writes,
            "produce_s": round(t1 - t0, 4),
            "bronze_s": round(t2 - t1, 4),
        }
        print(
            f"[peer-kafka] {name}: rows={rows} messages={messages} produce={t1 - t0:.3f}s "
            f"bronze={t2 - t1:.3f}s",
            file=sys.stderr,
        )
    producer.close()

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tables": out, "peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
