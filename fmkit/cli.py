"""The one entry point behind every recipe: parse the config, build the task, run the loop."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from fmkit.config import parse_config
from fmkit.errors import FmkitError
from fmkit.tasks import get_task
from fmkit.trainer import Trainer


def run_recipe(task_name: str, default_preset: str | Path, argv: list[str] | None = None) -> None:
    """Errors in the user's input end the run with one line on stderr and exit status 2."""
    prog = Path(sys.argv[0]).name
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Accelerate narrates every checkpoint file and warns about tied weights (BERT ties its decoder to the
    # embeddings on purpose); our own lines say what matters.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    try:
        task_class = get_task(task_name)
        config = parse_config(task_class.config_class, argv, default_preset=default_preset, prog=prog)
        Trainer(task_class(config)).fit()
    except FmkitError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
