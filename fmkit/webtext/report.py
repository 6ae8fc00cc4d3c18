"""stats.json and report.md: what each stage took in, let out and dropped, and why, with examples.

Counts come from the per-task stats files datatrove writes beside each step's completion markers, so a
resumed run reports the whole corpus, not only the tasks it ran. A stage ends at each `Meter` step.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

STAGE_DESCRIPTIONS = {
    "read": "records read from the input files",
    "extract": "main text extracted from HTML",
    "language": "language identification (PII already scrubbed)",
    "quality": "Gopher / C4 / FineWeb quality filters",
    "exact_dedup": "exact duplicates (content hash)",
    "near_dedup": "near duplicates (MinHash LSH)",
}
STATS_FILE, REPORT_FILE = "stats.json", "report.md"
SNIPPET_CHARS = 240
METER_PREFIX = "📏"


def _count(value) -> float:
    return value["total"] if isinstance(value, dict) else value


def _seconds(time_stats) -> float:
    return time_stats["total"] if isinstance(time_stats, dict) else float(time_stats or 0)


def _merged_steps(log_dir: Path) -> list[dict]:
    """One step list for all tasks of an executor: counts and seconds summed over its per-task stats files."""
    merged: list[dict] = []
    for path in sorted((log_dir / "stats").glob("*.json")):
        for position, step in enumerate(json.loads(path.read_text())):
            if position == len(merged):
                merged.append({"name": step["name"], "seconds": 0.0, "stats": defaultdict(float)})
            merged[position]["seconds"] += _seconds(step["time_stats"])
            for key, value in step["stats"].items():
                merged[position]["stats"][key] += _count(value)
    return merged


def stage_table(log_dirs: list[Path]) -> tuple[list[dict], dict]:
    """Walk every step of every executor (their log folders, in run order); each Meter closes a stage.

    Steps after a stage's Meter (its writer) count towards that stage; executors with no Meter (signatures,
    buckets, clusters) count towards the stage that follows them.
    """
    stages: list[dict] = []
    lines_removed: dict[str, int] = defaultdict(int)
    seconds, rejected, previous_out = 0.0, defaultdict(int), None
    for log_dir in log_dirs:
        closed_a_stage = False
        for step in _merged_steps(log_dir):
            stats = step["stats"]
            if not step["name"].startswith(METER_PREFIX):
                seconds += step["seconds"]
                reasons = {k.removeprefix("dropped_"): v for k, v in stats.items() if k.startswith("dropped_")}
                if not reasons and stats.get("dropped"):  # datatrove's dedup filters drop without a reason
                    reasons = {"duplicate": stats["dropped"]}
                for reason, n in reasons.items():
                    rejected[reason] += int(n)
                for key, n in stats.items():
                    if key.startswith("line-filter-"):
                        lines_removed[key.removeprefix("line-filter-")] += int(n)
                continue
            name = step["name"].split(": ", 1)[1]
            rejected = dict(sorted(rejected.items()))
            documents_in = previous_out if previous_out is not None else stats["documents"] + sum(rejected.values())
            stages.append({
                "stage": name,
                "description": STAGE_DESCRIPTIONS.get(name, name),
                "documents_in": int(documents_in),
                "documents_out": int(stats["documents"]),
                "bytes_out": int(stats["bytes"]),
                "rejected": rejected,
                "seconds": seconds,
            })  # fmt: skip
            previous_out, seconds, rejected, closed_a_stage = stats["documents"], 0.0, defaultdict(int), True
        if closed_a_stage:  # the executor's writer, after its Meter, belongs to the stage it wrote
            stages[-1]["seconds"] += seconds
            seconds = 0.0
    return stages, dict(lines_removed)


def rejected_examples(rejected_root: Path, per_reason: int) -> dict[str, list[dict]]:
    """The first few rejected records of each reason, in file order so reruns show the same ones."""
    import pyarrow.parquet as pq

    examples: dict[str, list[dict]] = defaultdict(list)
    for path in sorted((rejected_root / "read").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if len(examples[record["reason"]]) < per_reason:
                examples[record["reason"]].append(
                    {"where": record["url"] or record["source"], "text": record["detail"]}
                )
    for group in sorted(p for p in rejected_root.iterdir() if p.is_dir() and p.name != "read"):
        for path in sorted(group.glob("*.parquet")):
            for row in pq.read_table(path, columns=["text", "id", "metadata"]).to_pylist():
                metadata = row["metadata"] or {}
                reason = metadata.get("filter_reason") or group.name
                if len(examples[reason]) < per_reason:
                    snippet = " ".join(row["text"].split())[:SNIPPET_CHARS]
                    examples[reason].append({"where": metadata.get("url") or row["id"], "text": snippet})
    return dict(examples)


def write_report(layout, step_names: list[str], files: list[str], examples_per_reason: int,
                 token_stats: dict | None, wall_seconds: float) -> dict:  # fmt: skip
    """Write stats.json and report.md (stats.json last: its presence means the run finished)."""
    stages, lines_removed = stage_table([Path(layout.logs(name)) for name in step_names])
    output = stages[-1] if stages else {"documents_out": 0, "bytes_out": 0}
    stats = {
        "inputs": {"files": len(files), "bytes": sum(os.path.getsize(f) for f in files)},
        "output": {"documents": output["documents_out"], "bytes": output["bytes_out"], "folder": "documents/"},
        "stages": stages,
        "lines_removed": lines_removed,
        "tokens": None if token_stats is None else {k: token_stats[k] for k in ("documents", "tokens", "shards")},
        "wall_seconds": round(wall_seconds, 2),
    }
    examples = rejected_examples(layout.rejected_root, examples_per_reason)
    (layout.root / REPORT_FILE).write_text(render_report(stats, examples), encoding="utf-8")
    (layout.root / STATS_FILE).write_text(json.dumps(stats, indent=1))
    return stats


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def render_report(stats: dict, examples: dict[str, list[dict]]) -> str:
    inputs, output = stats["inputs"], stats["output"]
    lines = [
        "# Web-text corpus report",
        "",
        f"{inputs['files']} input files ({_mb(inputs['bytes'])} MB on disk) gave **{output['documents']} documents** "
        f"({_mb(output['bytes'])} MB of text) in `documents/`.",
    ]
    if stats["tokens"]:
        tokens = stats["tokens"]
        lines.append(f"Tokenized: {tokens['tokens']} tokens in {tokens['shards']} shards in `tokens/`.")
    lines += ["", "| stage | what | docs in | docs out | kept | MB out | core-seconds | rejected (reason: count) |",
              "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for stage in stats["stages"]:
        kept = stage["documents_out"] / stage["documents_in"] if stage["documents_in"] else 0.0
        reasons = ", ".join(f"{reason}: {n}" for reason, n in stage["rejected"].items()) or "-"
        lines.append(f"| {stage['stage']} | {stage['description']} | {stage['documents_in']} | "
                     f"{stage['documents_out']} | {kept:.0%} | {_mb(stage['bytes_out'])} | {stage['seconds']:.1f} | "
                     f"{reasons} |")  # fmt: skip
    if stats["lines_removed"]:
        removed = ", ".join(f"{reason}: {n}" for reason, n in sorted(stats["lines_removed"].items()))
        lines += ["", f"Lines removed inside kept documents (C4 rules): {removed}."]
    lines += ["", "## Rejected examples", "",
              "The first few records dropped for each reason; all of them are under `rejected/`.", ""]  # fmt: skip
    for reason, items in sorted(examples.items()):
        lines.append(f"### {reason}")
        lines += [f"- `{item['where']}`" + (f": {item['text']}" if item["text"] else "") for item in items]
        lines.append("")
    return "\n".join(lines)
