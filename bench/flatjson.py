"""The benches' one `--json` writer: a flat object, floats rounded."""
from __future__ import annotations

import json
from pathlib import Path


def write(path: str | None, result: dict, digits: int = 3) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: (round(v, digits) if isinstance(v, float) else v)
                                      for k, v in result.items()}, indent=1))
