#!/usr/bin/env python3
"""A webhook endpoint for Herald that verifies every request (Standard Webhooks).

    WEBHOOK_SECRET=whsec_... python3 examples/webhook-receiver.py 9000

Answers 204 to a request whose signature checks out (Herald acks the event) and 401 to any
other (Herald retries it, then dead-letters it). Standard library only.
"""
import base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))
TOLERANCE_SECONDS = 300  # refuse replays of old requests


def verified(headers, body):
    webhook_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    # During a secret rotation Herald sends two signatures, space-separated.
    return any(
        hmac.compare_digest(signature.removeprefix("v1,"), expected)
        for signature in headers["webhook-signature"].split(" ")
    )


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if not verified(self.headers, body):
            self.send_response(401)
        else:
            event = json.loads(body)  # structured mode: the whole CloudEvent
            print("verified", event["id"], event["type"], json.dumps(event.get("data")), flush=True)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Webhook).serve_forever()
