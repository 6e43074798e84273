"""Concurrent clients that wait for visibility, each in a closed loop.

Usage: visible_rounds.py CONFIG_JSON, CONFIG_JSON: {"base": URL, "token": T, "clients": 8,
"rounds": 8}

Each of `clients` threads sends `rounds` requests one after the other to
/ingest_fast/sellers?wait=visible (one new seller each, on one keep-alive connection with
http.client), the next as soon as the last is answered. Prints a JSON summary: the requests
answered 200, and the others' statuses.
"""

import http.client
import json
import sys
import threading
import urllib.parse
import uuid

config = json.loads(sys.argv[1])
url = urllib.parse.urlsplit(config["base"])
answered, failed = [], []
lock = threading.Lock()


def client(n):
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    for round_ in range(config["rounds"]):
        body = json.dumps({"records": [{
            "seller_id": f"round-{n}-{round_}-{uuid.uuid4().hex[:6]}",
            "seller_zip_code_prefix": "01001", "seller_city": "sp", "seller_state": "SP",
        }]})
        connection.request("POST", "/ingest_fast/sellers?wait=visible", body=body, headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {config['token']}",
        })
        response = connection.getresponse()
        response.read()
        with lock:
            (answered if response.status == 200 else failed).append(response.status)


threads = [threading.Thread(target=client, args=(n,)) for n in range(config["clients"])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(300)
print(json.dumps({"answered": len(answered), "failed": failed}))
