"""The platform's Gate API for cbgate's tests, on 127.0.0.1: every request's
general.signature is checked by the platform's own Python SDK (PyPI ecommpay-sdk,
payment_page_sdk.callback.Callback with its SignatureHandler), an implementation
independent of cbgate's. A valid request is answered 200 as the Gate API acknowledges
one; an invalid or unsigned one 400. Each request read is one JSON line in LOG
(path, verdict, the body as received), written before the answer.

Usage: python3 gate_stub.py SECRET LOG   (prints the port it listens on)
"""
import http.server
import itertools
import json
import sys

from payment_page_sdk.callback import Callback
from payment_page_sdk.signature_handler import SignatureHandler

SECRET, LOG = sys.argv[1], sys.argv[2]
log = open(LOG, "a", buffering=1, encoding="utf-8")
ids = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode("utf-8")
        try:
            request = Callback(body, SignatureHandler(SECRET))  # raises unless valid
            general = request.get_value("general") or {}
            status, answer = 200, {
                "status": "success",
                "request_id": "gate-%d" % next(ids),
                "project_id": general.get("project_id"),
                "payment_id": general.get("payment_id"),
            }
            verdict = "valid"
        except Exception as e:  # the SDK raises ProcessException for a bad signature
            status, answer = 400, {"status": "error", "code": "1401", "message": "Invalid signature"}
            verdict = "refused: %s" % e
        log.write(json.dumps({"path": self.path, "verdict": verdict, "body": body}) + "\n")
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
