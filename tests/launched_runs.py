"""Several recipe runs, one after another, inside one `accelerate launch`.

Each launched process pays its interpreter start, its imports and the process group once, not once per run:
a 2-process launch costs seconds before the first step. Accelerate and DeepSpeed reuse an initialised process
group, so the runs share one. A run's `end_training` would destroy it, and re-creating a group in the same
launcher's store hangs, so here the group lives until the last run has ended.

    accelerate launch --num_processes 2 tests/launched_runs.py RUNS.json

RUNS.json is a list of {"recipe": "mlm.py", "args": [...], "result": PATH}: every process runs each recipe as
`python recipes/<recipe> <args>` would, and the main process writes its exit status, stdout and stderr to
PATH as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accelerate.state import PartialState  # noqa: E402
from conftest import RECIPES, _run_script_here  # noqa: E402


def main(runs_file: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    PartialState.destroy_process_group = lambda self, group=None: None
    for run in json.loads(Path(runs_file).read_text()):
        result = _run_script_here(RECIPES / run["recipe"], run["args"])
        if rank == 0:
            report = {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
            Path(run["result"]).write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
