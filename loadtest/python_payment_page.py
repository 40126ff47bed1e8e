"""What a merchant backend does without cbgate: a WSGI handler that signs Payment Page
parameters with the platform's own PyPI SDK (ecommpay-sdk, payment_page_sdk), served by
gunicorn. The same job as cbgate's POST /payment-page/sign: the bearer token compared
in constant time, the JSON parameters read, the required ones checked, the URL built
and signed, a JSON answer. The baseline of BENCHMARKS.md's Payment Page rows.
Run: CBGATE_SECRET=... CBGATE_TOKEN=... gunicorn -k gthread -w 2 --threads 8 \
       -b 127.0.0.1:18071 python_payment_page:app
"""
import hmac
import json
import os

from payment_page_sdk.payment import Payment
from payment_page_sdk.payment_page import PaymentPage
from payment_page_sdk.signature_handler import SignatureHandler

HANDLER = SignatureHandler(os.environ.get("CBGATE_SECRET", "bench-secret"))
PAGE = PaymentPage(HANDLER, os.environ.get("PAYMENT_PAGE_URL", "https://paymentpage.platform.test/payment"))
TOKEN = ("Bearer " + os.environ.get("CBGATE_TOKEN", "bench-merchant-token-0123456789")).encode()
REQUIRED = ("project_id", "payment_id", "customer_id", "customer_email", "customer_first_name",
            "customer_last_name", "payment_currency", "payment_amount")


def reply(start_response, status, answer):
    data = json.dumps(answer).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ, start_response):
    given = environ.get("HTTP_AUTHORIZATION", "").encode()
    if not hmac.compare_digest(given, TOKEN):
        return reply(start_response, "401 Unauthorized", {"status": "rejected", "reason": "token"})
    size = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        params = json.loads(environ["wsgi.input"].read(size))
    except ValueError:
        return reply(start_response, "400 Bad Request", {"status": "rejected", "reason": "not JSON"})
    missing = [p for p in REQUIRED if params.get(p) in (None, "")]
    if missing:
        return reply(start_response, "400 Bad Request", {"status": "rejected", "missing": missing})
    payment = Payment(params.pop("project_id"), params.pop("payment_id"))
    for key, value in params.items():
        setattr(payment, key, value)
    url = PAGE.get_url(payment)
    signature = HANDLER.sign(payment.get_params())
    parameters = dict(payment.get_params(), signature=signature)
    return reply(start_response, "200 OK", {"parameters": parameters, "signature": signature, "url": url})
