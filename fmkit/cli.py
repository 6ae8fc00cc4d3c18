"""The one entry point behind every recipe: parse the config, build the task, run the loop."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fmkit.config import parse_config
from fmkit.errors import ConfigError, FmkitError
from fmkit.tasks import get_task, selector, task_names


def preset_path(configs: Path, recipe: str, task: str, kind: str = "demo") -> Path:
    """A task's preset under configs/<recipe>/: the demo, or an overlay on it such as "debug".

    A one-task recipe names them <kind>.yaml; a recipe of several, <task>.yaml for the demo and
    <task>-<kind>.yaml for an overlay, falling back to the recipe-wide <kind>.yaml.
    """
    folder = configs / recipe
    if selector(recipe) is None:
        return folder / f"{kind}.yaml"
    if kind == "demo":
        return folder / f"{task}.yaml"
    own = folder / f"{task}-{kind}.yaml"
    return own if own.is_file() else folder / f"{kind}.yaml"


def run_recipe(recipe: str, configs: Path, argv: list[str] | None = None) -> None:
    """Errors in the user's input end the run with one line on stderr and exit status 2.

    A recipe that serves several registered tasks takes `--task NAME` (`--method NAME` for the contrastive
    recipe; default: its first), and applies that task's demo preset unless `--config` names another.
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
        choices, flag = task_names(recipe), selector(recipe)
        task_name, argv = _pick_task(argv, choices, flag) if flag else (choices[0], argv)
        task_class = get_task(task_name)
        preset = preset_path(configs, recipe, task_name)
        config = parse_config(task_class.config_class, argv, default_preset=preset, prog=prog)
        task_class.run(config)
    except FmkitError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def _pick_task(argv: list[str], choices: Sequence[str], flag: str) -> tuple[str, list[str]]:
    """Take `--<flag> NAME` (or `--<flag>=NAME`) out of argv; the rest is the chosen task's config."""
    task, rest, args = choices[0], [], iter(argv)
    for arg in args:
        if arg == f"--{flag}":
            task = next(args, "")
        elif arg.startswith(f"--{flag}="):
            task = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if task not in choices:
        raise ConfigError(f"--{flag} {task!r}: expected one of {', '.join(choices)}")
    return task, rest
