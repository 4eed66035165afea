#!/usr/bin/env python3
"""A small stand-in for an Elasticsearch `_bulk` endpoint, for the audit
sink tests: it speaks the same wire format (NDJSON action + document pairs,
`create` with `_id`, 201 created / 409 conflict per item) and appends every
document it accepts to a JSON Lines store, which survives a restart (ids
already stored answer 409, as Elasticsearch does).

    es_collector.py PORT STORE [--hang]

`--hang`: accept connections and read requests but never answer (a
collector that is up but stuck).
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
STORE = sys.argv[2]
HANG = "--hang" in sys.argv[3:]

lock = threading.Lock()
ids = set()
try:
    with open(STORE, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                ids.add(json.loads(line)["hash"])
except FileNotFoundError:
    pass
store = open(STORE, "ab")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if HANG:
            time.sleep(3600)
            return
        if not self.path.endswith("/_bulk"):
            return self.answer(404, {"error": "no such endpoint"})
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self.answer(400, {"error": "expected application/x-ndjson"})
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if len(lines) % 2:
            return self.answer(400, {"error": "action without document"})
        items, errors = [], False
        with lock:
            for action, doc in zip(lines[0::2], lines[1::2]):
                meta = json.loads(action)["create"]
                json.loads(doc)  # must be a JSON document
                if meta["_id"] in ids:
                    errors = True
                    items.append({"create": {"_index": meta["_index"], "_id": meta["_id"], "status": 409,
                                             "error": {"type": "version_conflict_engine_exception"}}})
                else:
                    ids.add(meta["_id"])
                    store.write(doc + b"\n")
                    items.append({"create": {"_index": meta["_index"], "_id": meta["_id"], "status": 201}})
            store.flush()
        self.answer(200, {"took": 1, "errors": errors, "items": items})


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
