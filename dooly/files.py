"""Files Dooly writes whole or not at all: the text goes to a temporary file beside the
target, which is then renamed over it, so a crash, a full disk or Ctrl-C leaves the old
file (or none), never half a file. May import: nothing of Dooly."""
from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (its missing folders made); an OSError is raised after the
    temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
