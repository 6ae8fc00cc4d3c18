"""Share a trained model: write its Hugging Face model card and push its folder to the Hub."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError

from fmkit.errors import FmkitError
from fmkit.metrics import baseline_of

# Training by-products that belong on local disk, not in the published model repo.
_IGNORE_PATTERNS = ["checkpoints/**", "tensorboard/**", "*.tmp", ".*", "**/.*"]


@dataclass
class ModelCard:
    """What a reader of the model page needs: what the model is, what it saw, how it did, how to load it."""

    title: str
    library_name: str
    pipeline_tag: str | None
    tags: list[str]
    architecture: str
    data: str
    training: dict[str, object]
    metrics: dict[str, float]
    usage: str
    base_model: str | None = None
    sections: dict[str, str] = field(default_factory=dict)
    """Further sections by heading, after Results."""


def _cell(value: object) -> str:
    """Floats with 4 significant digits so tables stay narrow; anything else as written."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _results(metrics: dict[str, float]) -> list[tuple[object, ...]]:
    """One row per metric with its baselines beside it (value and which baseline), not as rows of their own."""
    values: dict[str, float] = {}
    baselines: dict[str, list[str]] = {}
    for name, value in metrics.items():
        metric = baseline_of(name, metrics)
        if metric is None:
            values[name] = value
        else:
            kind = name.removeprefix(f"{metric}_").replace("_", " ")
            baselines.setdefault(metric, []).append(f"{_cell(value)} ({kind})")
    return [(name, value, "; ".join(baselines.get(name, []))) for name, value in values.items()]


def _render(card: ModelCard) -> str:
    meta: dict[str, object] = {"library_name": card.library_name}
    if card.pipeline_tag:
        meta["pipeline_tag"] = card.pipeline_tag
    meta["tags"] = list(card.tags)
    if card.base_model:
        meta["base_model"] = card.base_model
    front_matter = yaml.safe_dump(meta, sort_keys=False).strip()
    sections = [
        f"---\n{front_matter}\n---",
        f"# {card.title}",
        f"## Architecture\n\n{card.architecture}",
        f"## Training data\n\n{card.data}",
        f"## Training\n\n{_table(('setting', 'value'), list(card.training.items()))}",
        f"## Results\n\n{_table(('metric', 'value', 'baseline'), _results(card.metrics))}",
        *(f"## {heading}\n\n{body}" for heading, body in card.sections.items()),
        f"## How to use\n\n```python\n{card.usage.strip()}\n```",
        "Trained with fmkit.",
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(output_dir: str | Path, card: ModelCard) -> Path:
    """Write output_dir/README.md: a Hugging Face model card (YAML front matter + markdown).

    Written to a temporary file and renamed, so a crash never leaves a half-written card to be pushed.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "README.md"
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".README.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_render(card))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _describe(err: HTTPError | OSError | ValueError) -> str:
    """One line for the user: the HTTP status and the server's reason, or the error type and its message."""
    if isinstance(err, HfHubHTTPError):
        response = err.response
        text = f"{response.status_code} {response.reason_phrase}"
        if err.server_message:
            text += f" ({err.server_message})"
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload model trained with fmkit",
) -> str:
    """Create the repo if needed and upload the folder; returns the repo URL.

    Token: HF_TOKEN env or cached login; never printed or logged. The endpoint is read from HF_ENDPOINT at call
    time because huggingface_hub reads it only once, at import.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FmkitError(f"push to hub failed for {repo_id}: {folder} is not a directory")
    token = get_token()
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            ignore_patterns=list(_IGNORE_PATTERNS),
        )
    except (HTTPError, OSError, ValueError) as err:
        # HTTPError: the HTTP client's base error (status, network, timeout); ValueError: an invalid repo id.
        message = _describe(err)
        if token:
            message = message.replace(token, "***")
        raise FmkitError(f"push to hub failed for {repo_id}: {message}") from None
    return str(url)
