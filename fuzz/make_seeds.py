#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/ from the
shared signature vectors (tests/data/signature.json), the JSON examples in the
platform's seed documents (shared/seeds/*.txt, when given) and config/cbgate.toml;
journal_record gets those callbacks as stored records (src/store/record.rs and
src/store/jetstream/record.rs, written here byte for byte) and attempt logs.

    python3 fuzz/make_seeds.py [SHARED_SEEDS_DIR]

Re-run it when the vectors or the seeds change; the output is committed."""
import hashlib
import json
import pathlib
import struct
import sys

fuzz = pathlib.Path(__file__).resolve().parent
repo = fuzz.parent
out = fuzz / "seeds"
seeds_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else repo.parent / "shared" / "seeds"

corpora = {t: set() for t in ["canonical", "callback", "terminal_request", "merchant_answer", "config",
                               "journal_record"]}


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    corpora[target].add(data)


def retarget(obj):
    """The fuzz targets know project 7 only."""
    if isinstance(obj, dict):
        if "project_id" in obj:
            obj["project_id"] = 7
        for v in obj.values():
            retarget(v)
    return obj


vectors = json.loads((repo / "tests/data/signature.json").read_text())["vectors"]
for v in vectors:
    add("canonical", v["payload_json"])
    payload = json.loads(v["payload_json"])
    if v["name"].startswith("seed:") and "callback" in v["name"]:
        add("callback", json.dumps(retarget(payload)))
    if isinstance(payload, dict) and payload.get("type") in ("verify", "check_deposit"):
        add("terminal_request", json.dumps(retarget(payload)))

# JSON examples of the seed documents: requests, callbacks and merchant answers.
if seeds_dir.is_dir():
    decoder = json.JSONDecoder()
    for doc in sorted(seeds_dir.glob("*.txt")):
        text = doc.read_text(errors="replace")
        i = text.find("{")
        while i >= 0:
            try:
                obj, end = decoder.raw_decode(text, i)
            except ValueError:
                i = text.find("{", i + 1)
                continue
            if isinstance(obj, dict):
                raw = text[i:end]
                add("canonical", raw)
                if "code" in obj:
                    add("merchant_answer", raw)
                elif obj.get("type") in ("verify", "check_deposit"):
                    add("terminal_request", json.dumps(retarget(obj)))
                elif "operation" in obj or "payment" in obj:
                    add("callback", json.dumps(retarget(obj)))
            i = text.find("{", end)

for answer in [
    '{"code":0,"currency":"KZT","additional_customer_id":"HFVDW42345"}',
    '{"code":0,"payment_id":"merchant-pay-1","description":"ok"}',
    '{"code":404,"error_description":"Account does not exist"}',
    '{"code":404,"message":"Account does not exist"}',
    '{"code":500,"message":"down","error_description":"down"}',
    '[404, null, null, "x", null]',
    '[0, "KZT", null, null, null]',
]:
    add("merchant_answer", answer)

add("config", (repo / "config/cbgate.toml").read_text())
add("config", '[server]\nlisten = "127.0.0.1:1"\n[delivery]\nschedule = ["0s", "1s"]\n'
    'breaker_failure_rate = 0.8\nbreaker_min_attempts = 20\nbreaker_window = "30s"\n'
    '[[projects]]\nid = 7\nsecrets = ["s"]\nterminal_url = "http://h/t"\n'
    '[[projects.endpoints]]\nname = "e"\nurl = "http://h/e"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n')

def put_str(text):
    raw = text.encode()
    return struct.pack("<H", len(raw)) + raw


def event_record(accepted_ms, project, dedup, order_key, endpoints, body):
    """src/store/record.rs: version | accepted_ms | project | dedup u128 | order key |
    endpoint count, each | body."""
    out = bytes([1]) + struct.pack("<QQ", accepted_ms, project)
    out += dedup.to_bytes(16, "little") + put_str(order_key)
    out += struct.pack("<H", len(endpoints)) + b"".join(put_str(e) for e in endpoints)
    return out + body


# Attempt logs as delivery keeps them (delivery::State, JSON).
states = [
    b"",
    b'{"since_ms":1700000000000,"next_ms":1700000005000,"tries":1,"rounds":1,"dropped":0,'
    b'"attempts":[{"at_ms":1700000000100,"ms":12,"status":503,"class":"status","error":"busy"}]}',
    b'{"since_ms":1,"next_ms":2,"tries":3,"attempts":[{"at_ms":1,"ms":0,"class":"circuit_open"}]}',
]
for state in states:
    add("journal_record", state)
callbacks = sorted(corpora["callback"])
for i, body in enumerate(callbacks):
    payment = json.loads(body).get("payment", {}).get("id", f"pay-{i}")
    endpoints = ["7/e", "7/ledger"][: i % 3]
    record = event_record(1_700_000_000_000 + i, 7, (i + 1) * 0x9E3779B97F4A7C15, f"7/{payment}",
                          endpoints, body)
    add("journal_record", record)
    if i < 3:
        # JetStream: a kept event (dead letter, replay) and a parked delivery.
        state = states[i]
        add("journal_record", bytes([1]) + struct.pack("<I", len(state)) + state + record)
        lane = f"7/{payment}".encode()
        add("journal_record", bytes([1]) + struct.pack("<QH", 40 + i, len(lane)) + lane + state)
add("journal_record", json.dumps({"at_ms": 1, "reason": "stored record #3 is malformed: empty",
                                  "endpoints": ["7/e"], "raw_base64": "AXRvcm4="}))

for target, items in corpora.items():
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for data in sorted(items):
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(items)} seeds")
