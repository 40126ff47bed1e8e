"""What merchants do today: a WSGI callback handler verifying the platform's signature
with the platform's own PyPI SDK (ecommpay-sdk), served by gunicorn. The baseline cbgate
is compared with. Run: CBGATE_SECRET=... gunicorn -w 2 -b 127.0.0.1:18070 python_sdk_handler:app
"""
import os

from payment_page_sdk.callback import Callback
from payment_page_sdk.signature_handler import SignatureHandler

HANDLER = SignatureHandler(os.environ.get("CBGATE_SECRET", "bench-secret"))


def app(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size).decode("utf-8")
    try:
        Callback(body, HANDLER)  # raises unless the signature is valid
        status, answer = "200 OK", b'{"status":"accepted"}'
    except Exception as e:  # the SDK raises ProcessingException (and others on bad JSON)
        status, answer = "400 Bad Request", ('{"status":"rejected","reason":"%s"}' % type(e).__name__).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
