"""The one entry point behind every recipe: parse the config, build the task, run the loop."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fmkit.config import parse_config
from fmkit.errors import ConfigError, FmkitError
from fmkit.tasks import get_task
from fmkit.trainer import Trainer


def run_recipe(
    task_name: str, default_preset: str | Path, argv: list[str] | None = None, choices: Sequence[str] = ()
) -> None:
    """Errors in the user's input end the run with one line on stderr and exit status 2.

    A recipe that serves several tasks passes their names as `choices`: `--task NAME` picks one (default
    `task_name`), and `{task}` in `default_preset` becomes its name.
    """
    prog = Path(sys.argv[0]).name
    argv = list(sys.argv[1:] if argv is None else argv)
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
        if choices:
            task_name, argv = _pick_task(argv, task_name, choices)
            default_preset = str(default_preset).format(task=task_name)
        task_class = get_task(task_name)
        config = parse_config(task_class.config_class, argv, default_preset=default_preset, prog=prog)
        Trainer(task_class(config)).fit()
    except FmkitError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def _pick_task(argv: list[str], default: str, choices: Sequence[str]) -> tuple[str, list[str]]:
    """Take `--task NAME` (or `--task=NAME`) out of argv; the rest is the chosen task's config."""
    task, rest, args = default, [], iter(argv)
    for arg in args:
        if arg == "--task":
            task = next(args, "")
        elif arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if task not in choices:
        raise ConfigError(f"--task {task!r}: expected one of {', '.join(choices)}")
    return task, rest
