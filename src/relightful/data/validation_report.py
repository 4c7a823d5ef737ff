"""The report of a `validate-data` run: one `CheckResult` per expectation, gathered in a `ValidationReport` that is
written as JSON (for machines and dvc) and markdown (for people).

The result types on their own: the suites (expectations.py) fill them, the job (validate_data.py) combines and writes
them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relightful.io import atomic_write_text

ENVMAPS = "envmaps"  # the report's table names: the env-map manifest ...
PAIRS = "pairs"      # ... and the pair manifest


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one expectation: which rule, on which column, and which rows broke it."""

    table: str  # "envmaps" | "pairs"
    expectation: str  # GE expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None  # the column checked ("a, b" for multi-column checks, None for table checks)
    description: str  # the rule in words
    success: bool
    unexpected_count: int = 0  # how many rows broke the rule (all of them, not only the ids listed)
    failing_ids: tuple[str, ...] = ()  # ids of the first failing rows (expectations.MAX_IDS)
    failing_values: tuple[str, ...] = ()  # what was wrong in each of those rows, same order
    observed: str | None = None  # for table-level checks: what was seen
    error: str | None = None  # the check could not be evaluated (e.g. a missing column)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "expectation": self.expectation,
            "column": self.column,
            "description": self.description,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "failing_ids": list(self.failing_ids),
            "failing_values": list(self.failing_values),
            "observed": self.observed,
            "error": self.error,
        }

    def summary(self) -> str:
        """One line for humans: the rule, and the rows that break it."""
        head = f"[{self.table}] {self.description}"
        if self.success:
            return head
        if self.error:
            return f"{head}: not evaluated: {self.error}"
        if not self.failing_ids:
            return f"{head}: failed" + (f" (observed: {self.observed})" if self.observed else "")
        rows = ", ".join(f"`{i}` ({v})" if v else f"`{i}`" for i, v in zip(self.failing_ids, self.failing_values))
        more = self.unexpected_count - len(self.failing_ids)
        noun = "row" if self.unexpected_count == 1 else "rows"
        return f"{head}: {self.unexpected_count} {noun} failing: {rows}" + (f" and {more} more" if more > 0 else "")


@dataclass
class ValidationReport:
    """All checks of one validation run; `success` only if every check passed."""

    success: bool
    results: list[CheckResult] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> {"rows": n, "source": path | None}

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    @classmethod
    def combine(cls, *reports: ValidationReport) -> ValidationReport:
        """One report out of several (e.g. envmaps + pairs)."""
        results = [r for rep in reports for r in rep.results]
        tables = {k: v for rep in reports for k, v in rep.tables.items()}
        return cls(success=all(rep.success for rep in reports), results=results, tables=tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "checks": len(self.results),
            "failed": len(self.failures),
            "tables": self.tables,
            "failures": [r.to_dict() for r in self.failures],
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        n, bad = len(self.results), len(self.failures)
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation: {verdict} ({n - bad} of {n} checks passed)", ""]
        if self.tables:
            lines += ["| table | rows | source |", "|---|---|---|"]
            lines += [f"| {t} | {i.get('rows')} | {i.get('source') or '-'} |" for t, i in self.tables.items()]
            lines.append("")
        if bad:
            lines += [f"## Failed checks ({bad})", ""]
            lines += [f"- {r.summary()}" for r in self.failures]
            lines.append("")
        passed = [r for r in self.results if r.success]
        if passed:
            lines += [f"## Passed checks ({len(passed)})", ""]
            lines += [f"- {r.summary()}" for r in passed]
            lines.append("")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        """Write the JSON report to `path` and the markdown next to it (same name, `.md`), each atomically."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        md = path.with_suffix(".md") if path.suffix != ".md" else path.with_name(path.name + ".md")
        atomic_write_text(md, self.to_markdown())
        return path


__all__ = ["CheckResult", "ENVMAPS", "PAIRS", "ValidationReport"]
