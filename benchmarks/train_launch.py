"""Training launch overhead: from submitting a TrainJob to its first user line, against torchrun by hand.

    .venv/bin/python benchmarks/train_launch.py [--runs 5] [--nproc 2]

Both sides run the same script, whose first statement prints the wall-clock time, so the
measure is launch cost alone (no log polling): for Shipyard, ``TrainerClient.train()`` on a
running ``shipyard up`` with the torch-distributed runtime; by hand, ``python -m
torch.distributed.run --standalone --nproc-per-node N script.py`` started by ``subprocess``. The plane's own
start is not counted (it runs once and keeps running). It prints a Markdown table of the median
and min/max over the runs, to paste under "Training launch" in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SCRIPT = """\
import time
print("first-line", repr(time.time()), flush=True)
import os
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
"""


def first_line_time(text: str) -> float:
    """The earliest timestamp any rank printed."""
    times = [float(line.split()[1]) for line in text.splitlines() if line.startswith("first-line ")]
    if not times:
        raise RuntimeError(f"no first line in the output:\n{text}")
    return min(times)


def by_hand(script: Path, nproc: int) -> float:
    """Seconds from starting torchrun to the first user line."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", str(nproc), str(script)], capture_output=True, text=True, check=True)
    return first_line_time(result.stdout) - start


def with_shipyard(client, script: Path, nproc: int) -> float:
    """Seconds from ``TrainerClient.train()`` to the first user line (read from the job's log afterwards)."""
    from shipyard.train.client import new_job_name, trainjob_document
    from shipyard.train.types import CommandTrainer

    name = new_job_name()
    document = trainjob_document(name, "torch-distributed", CommandTrainer(["python", str(script)]),
                                 home=client.home, num_proc_per_node=nproc)
    start = time.time()
    client.control.apply(document, namespace=client.namespace)
    client.wait_for_job_status(name, timeout=300)
    elapsed = first_line_time("\n".join(client.get_job_logs(name))) - start
    client.delete_job(name, wait=True)
    return elapsed


def row(label: str, values: list[float]) -> str:
    return f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="Launches per side (default 5).")
    parser.add_argument("--nproc", type=int, default=2, help="Processes per job (default 2).")
    options = parser.parse_args()

    from planeproc import PlaneProcess
    from shipyard.train.client import TrainerClient

    with tempfile.TemporaryDirectory(prefix="train-launch-") as folder:
        root = Path(folder)
        script = root / "first_line.py"
        script.write_text(SCRIPT)
        hand = [by_hand(script, options.nproc) for _ in range(options.runs)]
        plane = PlaneProcess(root / "home").wait_up()
        try:
            with TrainerClient(url=plane.api, home=plane.home) as client:
                with_shipyard(client, script, options.nproc)  # warm-up: first job pays for imports in the plane
                shipyard = [with_shipyard(client, script, options.nproc) for _ in range(options.runs)]
        finally:
            plane.stop()
    print(f"Submit to first user line, torch-distributed, 1 node x {options.nproc} processes, "
          f"{options.runs} runs (seconds):\n")
    print("| launch | median | min | max |\n| --- | --- | --- | --- |")
    print(row("torchrun by hand", hand))
    print(row("shipyard TrainJob (TrainerClient.train)", shipyard))
    print(f"\noverhead (median): {statistics.median(shipyard) - statistics.median(hand):+.2f} s")


if __name__ == "__main__":
    main()
