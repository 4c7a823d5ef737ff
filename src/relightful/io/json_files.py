"""Reading the project's small JSON files (rigs, model configs, checkpoint state) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relightful.io.errors import InputError


def read_json(path: str | Path, missing: str = "file not found") -> Any:
    """The parsed file; a missing file raises `InputError(path, missing)`, an unreadable one says why."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None
