"""Print the JSON Schema of shipyard.yaml: ``python -m shipyard.package.schema > docs/shipyard.schema.json``."""

from __future__ import annotations

import json

from shipyard.package.config import json_schema

if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
