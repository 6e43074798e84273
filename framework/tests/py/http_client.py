"""A real HTTP client for the gateway tests, independent of the framework's code.

Takes a JSON list of requests (`url`, optional `method`, `headers`, `body`) as its argument,
sends each with urllib, decodes each body by its Content-Type with the standard library (json,
csv) or pyarrow (Arrow IPC stream, Parquet), and prints a JSON list of
`{status, headers, body}` (`{status: null, error}` when no answer came); a request with
`validate_openapi` also gets `openapi_valid` from openapi-spec-validator.
"""

import csv
import http.client
import io
import json
import sys
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq


def send(request):
    body = request.get("body")
    req = urllib.request.Request(
        request["url"],
        method=request.get("method", "GET"),
        headers=request.get("headers", {}),
        data=body.encode() if body is not None else None,
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
        # No answer at all (the server went away): the caller decides what that means.
        return {"status": None, "error": repr(error)}
    kind = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    kind = kind.split(";")[0].strip()
    if kind in ("application/json", "application/problem+json"):
        decoded = json.loads(raw)
    elif kind == "application/x-ndjson":
        decoded = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    elif kind == "text/csv":
        decoded = list(csv.DictReader(io.StringIO(raw.decode())))
    elif kind == "application/vnd.apache.arrow.stream":
        decoded = pa.ipc.open_stream(raw).read_all().to_pylist()
    elif kind == "application/vnd.apache.parquet":
        decoded = pq.read_table(io.BytesIO(raw)).to_pylist()
    else:
        decoded = raw.decode(errors="replace")
    checked = {}
    if request.get("validate_openapi"):
        from openapi_spec_validator import validate

        try:
            validate(decoded)
            checked["openapi_valid"] = True
        except Exception as error:  # the validator's own error kinds vary by version
            checked["openapi_valid"] = False
            checked["openapi_error"] = str(error)[:2000]
    return {
        **checked,
        "status": status,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body": decoded,
    }


# The requests as JSON, or `@path` of a file holding them (a large body exceeds argv's limit).
arg = sys.argv[1]
if arg.startswith("@"):
    with open(arg[1:], encoding="utf-8") as f:
        arg = f.read()
print(json.dumps([send(r) for r in json.loads(arg)], default=str))
