"""Payment Page URLs from the platform's Python SDK (PyPI ecommpay-sdk 1.0.6, module
payment_page_sdk) beside cbgate's for the same parameter sets, and whether each URL
verifies the way the platform reads it (query parsed, signature recomputed over the
other parameters). Prints one JSON object per parameter set.

Each set is built with the SDK's own Payment object (project_id, then the
interface_type and payment_id it adds, then the parameters in the order set); cbgate
gets the same parameters as a JSON object in that order.

Usage: python3 payment_page_urls.py MERCHANT_URL TOKEN SECRET BASE_URL PROJECT
"""
import base64
import hashlib
import hmac
import json
import re
import sys
import urllib.parse
import urllib.request

from payment_page_sdk.payment import Payment
from payment_page_sdk.payment_page import PaymentPage
from payment_page_sdk.signature_handler import SignatureHandler

MERCHANT, TOKEN, SECRET, BASE, PROJECT = sys.argv[1:6]
PROJECT = int(PROJECT)
OMIT = object()  # the SDK does not get this parameter

SEED = [  # the seeds' Kassa24 Payment Page example (EPayWidget.run)
    ("customer_id", "customer_123"),
    ("customer_first_name", "John"),
    ("customer_last_name", "Doe"),
    ("customer_email", "johndoe@example.com"),
    ("payment_currency", "KZT"),
    ("payment_amount", 1000),
]
OPTIONS = {"enable_mobile_service": 1, "selected_operator": "TELE2"}

# name -> (payment_id, [(key, value for the SDK, value for cbgate)], ensure_ascii)
CASES = {
    "seed_kassa24": ("payment_47", [(k, v, v) for k, v in SEED] + [("force_payment_method", "kassa24", "kassa24")], True),
    "cyrillic": ("оплата-47", [
        ("customer_id", "клиент 123", "клиент 123"),
        ("customer_first_name", "Жанна", "Жанна"),
        ("customer_last_name", "Әбенова-Құрманғали", "Әбенова-Құрманғали"),
        ("customer_email", "zhanna+kz@пример.kz", "zhanna+kz@пример.kz"),
        ("payment_currency", "KZT", "KZT"),
        ("payment_amount", 50000, 50000),
        ("payment_description", "Оплата заказа №47 — «тест» 100%", "Оплата заказа №47 — «тест» 100%"),
    ], False),
    "cyrillic_escaped": ("p-ascii-48", [
        ("customer_id", "c48", "c48"),
        ("customer_first_name", "Ерлан", "Ерлан"),
        ("customer_last_name", "Сейткали", "Сейткали"),
        ("customer_email", "e@example.kz", "e@example.kz"),
        ("payment_currency", "KZT", "KZT"),
        ("payment_amount", 100, 100),
        ("language_code", "kk", "kk"),
    ], True),
    # The platform's plug-ins send payment_methods_options as JSON text: cbgate carries
    # an object as its JSON text, so the SDK gets the same text.
    "nested_options_object": ("payment_49", [(k, v, v) for k, v in SEED] + [
        ("force_payment_method", "mobile", "mobile"),
        ("payment_methods_options", json.dumps(OPTIONS), OPTIONS),
    ], True),
    "nested_options_text": ("payment_50", [(k, v, v) for k, v in SEED] + [
        ("force_payment_method", "mobile", "mobile"),
        ("payment_methods_options", json.dumps({"additional_data": {"embedded_mode": True}, "ops": ["ТЕЛЕ2", 2]}),
         json.dumps({"additional_data": {"embedded_mode": True}, "ops": ["ТЕЛЕ2", 2]})),
    ], False),
    "empty_values": ("payment_51", [(k, v, v) for k, v in SEED] + [
        ("payment_description", "", ""),
        ("customer_phone", "", ""),
        ("merchant_data", "", ""),
    ], True),
    "special_characters": ("pay/52?&=#", [(k, v, v) for k, v in SEED] + [
        ("merchant_success_url", "https://shop.test/ok?order=52&x=a+b#top", "https://shop.test/ok?order=52&x=a+b#top"),
        ("payment_description", "a;b:c,d'e\"f\\g<h>i~j*k!l(m)n$o@p", "a;b:c,d'e\"f\\g<h>i~j*k!l(m)n$o@p"),
        ("customer_phone", "+7 701 123 45 67", "+7 701 123 45 67"),
    ], True),
    "frame_mode_unsigned": ("payment_53", [(k, v, v) for k, v in SEED] + [
        ("frame_mode", "iframe", "iframe"),
        ("target_element", "pp-frame", "pp-frame"),
    ], True),
    "numbers": ("payment_54", [(k, v, v) for k, v in SEED] + [
        ("terminal_id", 7, 7),
        ("customer_ssn", 1234, 1234),
        ("best_before_minutes", 0, 0),
    ], True),
    # null has no text in a query: cbgate leaves it out (the SDK writes "None").
    "null_left_out": ("payment_55", [(k, v, v) for k, v in SEED] + [
        ("customer_phone", OMIT, None),
        ("language_code", "ru", "ru"),
    ], True),
    # Documented differences (README, "Merchant side"):
    "booleans": ("payment_56", [(k, v, v) for k, v in SEED] + [
        ("redirect", True, True),
        ("close_on_missclick", False, False),
        ("recurring_register", True, True),
    ], True),
    "natural_order": ("payment_57", [(k, v, v) for k, v in SEED] + [
        ("merchant_data_2", "two", "two"),
        ("merchant_data_10", "ten", "ten"),
    ], True),
}


def natural_key(text):
    """PHP's strnatcmp for these keys: digit runs (no leading zeros here) by value."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p]


def php_signature(params):
    """The spec's canonical string (PHP natural order on the path, frame_mode left out)."""
    entries = sorted(
        ((k.replace(":", "::"), "%s:%s" % (k.replace(":", "::"), v)) for k, v in params.items() if k != "frame_mode"),
        key=lambda e: natural_key(e[0]),
    )
    message = ";".join(e for _, e in entries).encode()
    return base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha512).digest()).decode()


def verifies(url):
    """How the platform reads a Payment Page URL: the query's text values, the
    signature recomputed over all but `signature` (PHP order, and Python's)."""
    query = urllib.parse.urlsplit(url).query
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    params = {k: v for k, v in pairs if k != "signature"}
    signature = dict(pairs)["signature"]
    return {
        "php": php_signature(params) == signature,
        "python": SignatureHandler(SECRET).sign(params) == signature,
    }


def cbgate(body):
    request = urllib.request.Request(
        MERCHANT + "/payment-page/sign",
        data=body.encode("utf-8"),
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


for name, (payment_id, params, ascii_only) in CASES.items():
    payment = Payment(PROJECT, payment_id)
    for key, sdk_value, _ in params:
        if sdk_value is not OMIT:
            setattr(payment, key, sdk_value)
    handler = SignatureHandler(SECRET)
    sdk_url = PaymentPage(handler, BASE).get_url(payment)
    sdk_signature = handler.sign(payment.get_params())
    # cbgate gets the SDK's parameters (project_id, interface_type, payment_id first)
    # in the SDK's order, with its own value where the SDK needs another form.
    body = dict(payment.get_params())
    for key, _, value in params:
        body[key] = value
    status, answer = cbgate(json.dumps(body, ensure_ascii=ascii_only))
    print(json.dumps({
        "name": name,
        "status": status,
        "sdk_url": sdk_url,
        "sdk_signature": sdk_signature,
        "sdk_url_verifies": verifies(sdk_url),
        "cbgate_url": answer["url"],
        "cbgate_signature": answer["signature"],
        "cbgate_url_verifies": verifies(answer["url"]),
        "cbgate_parameters_signature": answer["parameters"]["signature"],
    }, ensure_ascii=False), flush=True)
