"""``python -m shipyard.train.tracker --workers N --port P``: XGBoost's collective tracker for one job.

A process of its own (in the job's session), so the job's workers keep their tracker when the
control plane restarts. It exits once every worker has finished.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipyard.train.tracker")
    parser.add_argument("--workers", type=int, required=True, help="number of XGBoost workers")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    options = parser.parse_args(argv)
    from xgboost.tracker import RabitTracker

    tracker = RabitTracker(n_workers=options.workers, host_ip="127.0.0.1", port=options.port, sortby="task")
    tracker.start()
    print(f"tracker listening on 127.0.0.1:{options.port} for {options.workers} workers", flush=True)
    tracker.wait_for()
    print("tracker: all workers finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
