#!/usr/bin/env python3
"""Every policy example in docs/POLICY.md is valid against the policy schema."""
import json
import re
import sys

import jsonschema

doc_path, schema_path = sys.argv[1], sys.argv[2]
schema = json.load(open(schema_path))
jsonschema.Draft202012Validator.check_schema(schema)
blocks = re.findall(r"```json\n(.*?)```", open(doc_path).read(), re.S)
if not blocks:
    print("no examples found")
    sys.exit(1)
for block in blocks:
    jsonschema.validate(json.loads(block), schema)
print(f"{len(blocks)} policy examples valid")
