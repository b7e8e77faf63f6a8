"""``python -m shipyard.train.step EXIT_FILE -- COMMAND...``: one training process, supervised.

Runs COMMAND in its own process group's session (the wrapper's), waits for it, and writes its
exit code to EXIT_FILE (temp file, then rename) before exiting with the same code. The exit file
is how a control plane that restarted, and so is not the parent any more, learns how each
process of an adopted job ended. SIGTERM and SIGINT are passed on to COMMAND, and the wrapper
keeps waiting, so training code can checkpoint before it stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def write_exit_code(path: Path, code: int) -> None:
    """Write ``code`` to ``path`` atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{code}\n")
    os.replace(temporary, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m shipyard.train.step EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file = Path(argv[0])
    try:
        child = subprocess.Popen(argv[2:])
    except OSError as error:
        print(f"shipyard: cannot start {argv[2]!r}: {error}", file=sys.stderr, flush=True)
        write_exit_code(exit_file, 127)
        return 127

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    write_exit_code(exit_file, code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
