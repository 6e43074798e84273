#!/usr/bin/env python
"""Parse a DAG folder as Airflow 3's DAG processor does (BundleDagBag: the folder is a bundle, on
sys.path, so DAG files import modules next to them) and print the task graph as JSON.

usage: inspect_dags.py [DAG_FOLDER] [--out FILE]
Only the JSON document goes to stdout (or FILE); all Airflow logging/warnings are
redirected to stderr at the file-descriptor level. Exit code: 0 if no import errors,
2 if there were import errors (JSON is still printed), 1 on crash.
No metadata DB is needed (parsing only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta


def _json_default(o):
    if isinstance(o, timedelta):
        return o.total_seconds()
    return str(o)


def asset_expr(obj):
    """Recursive, JSON-able form of an asset condition (Asset / AssetAll / AssetAny / AssetAlias / refs)."""
    from airflow.sdk.definitions.asset import (
        Asset,
        AssetAlias,
        AssetAll,
        AssetAny,
        AssetNameRef,
        AssetUriRef,
    )

    if obj is None:
        return None
    if isinstance(obj, AssetAll):
        return {"all": [asset_expr(o) for o in obj.objects]}
    if isinstance(obj, AssetAny):
        return {"any": [asset_expr(o) for o in obj.objects]}
    if isinstance(obj, Asset):
        return {"asset": {"name": obj.name, "uri": obj.uri, "group": obj.group}}
    if isinstance(obj, AssetAlias):
        return {"alias": {"name": obj.name, "group": obj.group}}
    if isinstance(obj, AssetNameRef):
        return {"asset_ref": {"name": obj.name}}
    if isinstance(obj, AssetUriRef):
        return {"asset_ref": {"uri": obj.uri}}
    return {"unknown": repr(obj)}


def outlet_uris(task):
    out = []
    for o in task.outlets or []:
        uri = getattr(o, "uri", None)
        out.append(uri if uri is not None else {"name": getattr(o, "name", None), "type": type(o).__name__})
    return out


def describe_dag(dag):
    from airflow.serialization.encoders import coerce_to_core_timetable

    core_tt = coerce_to_core_timetable(dag.timetable)
    sched = dag.schedule
    asset_cond = getattr(dag.timetable, "asset_condition", None)
    if isinstance(sched, str) or sched is None:
        sched_json, kind = sched, ("cron_or_preset" if sched else "none")
    elif asset_cond is not None:
        sched_json, kind = None, "assets"
    else:
        sched_json, kind = repr(sched), type(sched).__name__
    tasks = []
    for task in sorted(dag.tasks, key=lambda t: t.task_id):
        tasks.append(
            {
                "task_id": task.task_id,
                "operator": f"{type(task).__module__}.{type(task).__name__}",
                "operator_name": type(task).__name__,
                "bash_command": getattr(task, "bash_command", None),
                "trigger_rule": str(getattr(task.trigger_rule, "value", task.trigger_rule)),
                "upstream_task_ids": sorted(task.upstream_task_ids),
                "downstream_task_ids": sorted(task.downstream_task_ids),
                "retries": task.retries,
                "retry_delay_s": task.retry_delay.total_seconds() if task.retry_delay else None,
                "has_on_failure_callback": bool(task.on_failure_callback),
                "outlets": outlet_uris(task),
                "inlets": [getattr(i, "uri", repr(i)) for i in (task.inlets or [])],
            }
        )
    return {
        "dag_id": dag.dag_id,
        "fileloc": dag.fileloc,
        "schedule": sched_json,
        "schedule_kind": kind,
        "timetable": {
            "class": type(core_tt).__name__,
            "summary": core_tt.summary,
            "description": core_tt.description,
            "periodic": getattr(core_tt, "periodic", None),
        },
        "asset_condition": asset_expr(asset_cond),
        "catchup": dag.catchup,
        "start_date": dag.start_date.isoformat() if dag.start_date else None,
        "tags": sorted(dag.tags or []),
        "default_retries": (dag.default_args or {}).get("retries"),
        "default_args": {k: v for k, v in (dag.default_args or {}).items() if not callable(v)},
        "has_dag_on_failure_callback": bool(dag.on_failure_callback),
        "tasks": tasks,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dag_folder", nargs="?", default=os.environ.get("AIRFLOW__CORE__DAGS_FOLDER"))
    ap.add_argument("--out")
    args = ap.parse_args()

    # Keep real stdout for the JSON; send everything Airflow prints to stderr.
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    t0 = time.monotonic()
    from pathlib import Path

    from airflow.dag_processing.dagbag import BundleDagBag  # what the DAG processor parses with

    t_import = time.monotonic() - t0
    folder = Path(args.dag_folder).resolve()
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder)
    t_parse = time.monotonic() - t0 - t_import
    doc = {
        "airflow_version": __import__("airflow").__version__,
        "dag_folder": str(args.dag_folder),
        "import_errors": dict(bag.import_errors),
        "warnings": {k: list(v) for k, v in getattr(bag, "captured_warnings", {}).items()},
        "dags": [describe_dag(bag.dags[d]) for d in sorted(bag.dags)],
        "timing_s": {"import": round(t_import, 3), "parse": round(t_parse, 3)},
    }
    text = json.dumps(doc, indent=2, default=_json_default, sort_keys=False)
    sys.stdout.flush()
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    else:
        os.write(json_fd, (text + "\n").encode())
    return 2 if bag.import_errors else 0


if __name__ == "__main__":
    sys.exit(main())
