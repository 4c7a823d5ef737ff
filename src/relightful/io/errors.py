"""The one exception type for bad input: it always names the file and the reason."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """An input file (or folder) that cannot be used, with the reason why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
