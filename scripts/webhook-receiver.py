#!/usr/bin/env python3
"""A webhook endpoint for trying and testing `--sink http`, on 127.0.0.1.

Appends one JSON line per request to --log: {"status", "headers", "body"}.
Answers 200, or, to exercise the relay's retries and refusals:
  --flaky P          answer 503 with probability P (before reading the event as accepted)
  --throttle P       answer 429 with "Retry-After: 1" with probability P
  --reject-key K     answer 400 to events whose "key" is K (repeatable)
  --delay-ms N       wait up to N ms (random) before answering, so requests overlap
  --redirect         answer 301 to everything
Prints "listening on PORT" once ready.

  python3 scripts/webhook-receiver.py --port 8080 --log /tmp/hooks.ndjson
"""
import argparse
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--log", required=True, help="where to append the requests; /dev/null for none")
parser.add_argument("--flaky", type=float, default=0)
parser.add_argument("--throttle", type=float, default=0)
parser.add_argument("--reject-key", action="append", default=[])
parser.add_argument("--delay-ms", type=int, default=0)
parser.add_argument("--redirect", action="store_true")
args = parser.parse_args()
lock = threading.Lock()
log = None if args.log == "/dev/null" else open(args.log, "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and the
        # client's delayed ACK add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if args.delay_ms:
            time.sleep(random.random() * args.delay_ms / 1000)
        status, extra = 200, {}
        key = None
        if args.reject_key:
            try:
                key = json.loads(body).get("key")
            except Exception:
                pass
        if args.redirect:
            status, extra = 301, {"Location": "http://127.0.0.1:1/moved"}
        elif key in args.reject_key:
            status = 400
        elif random.random() < args.flaky:
            status = 503
        elif random.random() < args.throttle:
            status, extra = 429, {"Retry-After": "1"}
        if log is not None:
            with lock:
                log.write(json.dumps({"status": status, "headers": dict(self.headers), "body": body.decode("utf-8", "replace")}) + "\n")
        reply = b'{"ok":true}' if status == 200 else b'{"error":"rejected by the test receiver"}'
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
