#!/usr/bin/env python3
"""Every example in PROTOCOL.md is valid against the JSON Schema.

Lines starting with "> " are requests, lines starting with "< " are replies;
text after the closing brace ("+ 1 fd") is commentary. A request the daemon
answers with a decoding error (invalid_request, unsupported, limit, or an
unreadable message) must be refused by the schema too.
"""
import json
import sys

import jsonschema

protocol_md, schema_path = sys.argv[1], sys.argv[2]
with open(schema_path) as f:
    schema = json.load(f)
jsonschema.Draft202012Validator.check_schema(schema)
defs = schema["$defs"]


def validator(name):
    sub = {"$schema": schema["$schema"], "$defs": defs, "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(sub)


requests, replies = validator("request"), validator("reply")
DECODE_ERRORS = {"invalid_request", "unsupported", "limit"}


def json_part(line):
    text = line[2:].strip()
    end = text.rfind("}")
    return text[: end + 1] if end >= 0 else text


checked = failures = 0
pending_request = None
for number, line in enumerate(open(protocol_md), 1):
    if line.startswith("> "):
        pending_request = (number, json_part(line))
    elif line.startswith("< ") and pending_request:
        reply = json.loads(json_part(line))
        checked += 1
        errors = list(replies.iter_errors(reply))
        if errors:
            failures += 1
            print(f"PROTOCOL.md:{number}: reply not valid: {errors[0].message}")
        req_line, req_text = pending_request
        pending_request = None
        try:
            request = json.loads(req_text)
        except json.JSONDecodeError:
            request = None
        refused_by_decoder = not reply["ok"] and reply["error"]["code"] in DECODE_ERRORS
        request_valid = request is not None and requests.is_valid(request)
        if refused_by_decoder and request_valid and reply["error"]["code"] != "limit":
            failures += 1
            print(f"PROTOCOL.md:{req_line}: the daemon refuses this request but the schema accepts it")
        if not refused_by_decoder and not request_valid:
            failures += 1
            err = next(requests.iter_errors(request)).message if request is not None else "not JSON"
            print(f"PROTOCOL.md:{req_line}: request not valid: {err}")

if checked == 0:
    print("no examples found")
    sys.exit(1)
print(f"{checked} examples checked, {failures} failed")
sys.exit(1 if failures else 0)
