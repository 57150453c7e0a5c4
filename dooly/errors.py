"""User-facing input errors: one line naming the file and the field, exit code 2."""
from __future__ import annotations


class DoolyInputError(Exception):
    """Bad input the user can fix. The CLI prints `str(err)` and exits 2, no traceback."""

    def __init__(self, path: object, problem: str, field: str | None = None):
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: field '{field}'" if field else self.path
        # one line whatever a file name or a quoted value holds
        super().__init__(" ".join(f"{where}: {problem}".splitlines()))


def quoted(value: object, width: int = 40) -> str:
    """A value as an error message quotes it: its repr, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


class MissingDataError(LookupError):
    """A prediction needs a unit that has no measurements in the environment."""

    def __init__(self, unit_key: str, env: str, detail: str = ""):
        self.unit_key, self.env = unit_key, env
        msg = f"no measurements for unit {unit_key} in environment {env}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


def read_json(path) -> object:
    """A JSON input file, or a one-line DoolyInputError naming it."""
    import json
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise DoolyInputError(path, "file not found")
    try:
        text = path.read_text()
    except OSError as err:
        raise DoolyInputError(path, f"cannot read ({err.strerror or err})") from None
    except ValueError as err:  # not UTF-8
        raise DoolyInputError(path, f"not valid JSON ({err.__class__.__name__}: {err})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # also a 5,000-digit number, deep nesting
        raise DoolyInputError(path, f"not valid JSON ({err.__class__.__name__}: {err})") from None
