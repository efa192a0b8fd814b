"""The doctor's report: one ``Check`` per finding, and the text ``sam3-backend doctor`` prints."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is OK, WARN, FAIL or SKIP; ``fix`` says what to change."""

    name: str
    status: str
    detail: str
    fix: str = ""


def render(checks: list[Check]) -> str:
    """The human report: one line per check, the fix indented below anything not OK."""
    width = max([len(c.name) for c in checks] + [8])
    lines = []
    for c in checks:
        lines.append(f"[{c.status:^4}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':6} {'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        lines.append(f"\n{len(failed)} check(s) failed: {', '.join(failed)}. "
                     "Fix them and run `sam3-backend doctor` again.")
    else:
        warned = [c.name for c in checks if c.status == WARN]
        lines.append("\nall checks passed" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    return "\n".join(lines)


__all__ = ["Check", "FAIL", "OK", "SKIP", "WARN", "render"]
