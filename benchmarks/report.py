"""What the benchmark scripts share: their section of docs/performance.md between markers, and the
machine a run was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def check_doc(path: Path, start: str, end: str) -> str:
    """The document, if it has exactly one pair of markers in order (checked before running anything)."""
    try:
        document = path.read_text()
    except OSError as error:
        raise SystemExit(f"--doc: cannot read {path}: {error.strerror}") from None
    if document.count(start) != 1 or document.count(end) != 1 or document.index(start) > document.index(end):
        raise SystemExit(f"--doc: {path} needs exactly one {start} line followed by one {end} line")
    return document


def write_doc(path: Path, text: str, start: str, end: str) -> None:
    """Replace what lies between the markers in ``path`` (nothing is appended when they are missing)."""
    head, rest = check_doc(path, start, end).split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{text}{end}{tail}")


def environment(modules: tuple[str, ...]) -> dict[str, Any]:
    """Cores, Python, platform, the commit (``-dirty`` with local changes) and the versions of ``modules``."""
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() or "unknown"
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                cwd=REPO).stdout.strip())
    versions = {}
    for module in modules:
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not listed
            pass
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "commit": commit + ("-dirty" if dirty else ""), "versions": versions}
