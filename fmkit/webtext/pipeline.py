"""The web-text pipeline as datatrove stages on its local executor; ours are the blocks datatrove lacks.

filter     read → extract → scrub PII → language → Gopher/C4/FineWeb quality      (one task per file share)
exact      content-hash signatures → find duplicates → drop all but one           (datatrove exact dedup)
near       MinHash signatures → LSH buckets → clusters → drop all but one         (datatrove MinHash dedup)
publish    move the last stage's Parquet files into documents/
tokenize   fmkit's shard writer, optional (--tokenizer)

Each stage's tasks mark themselves complete in the stage's log folder, so a rerun skips finished tasks and
reruns unfinished ones from scratch: a half-written file only ever lives under .work/, overwritten on resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter

from fmkit.errors import ConfigError, DataError
from fmkit.webtext.config import WebTextConfig
from fmkit.webtext.extract import MainTextExtractor
from fmkit.webtext.language import LanguageFilter
from fmkit.webtext.readers import WebInputReader, expand_inputs
from fmkit.webtext.report import write_report
from fmkit.webtext.words import word_tokenizer

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
TASKS_PER_WORKER = 8


class Meter(PipelineStep):
    """Counts the documents and UTF-8 bytes passing one point of a pipeline, for stats.json."""

    type = "📏 - METER"

    def __init__(self, stage: str):
        self.name = stage
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
            yield doc


@contextmanager
def task_logs_to_files_only():
    """datatrove prints each task's pipeline and stats table on the console: thousands of lines for a crawl.

    Keep those in each step's logs/ folder (as datatrove writes them) and show only warnings on the console.
    """
    import datatrove.executor.base as executor_base
    from datatrove.utils.logging import setup_default_logger
    from loguru import logger as loguru_logger

    originals = (executor_base.add_task_logger, executor_base.close_task_logger)

    def console(level: str) -> None:
        loguru_logger.remove()
        loguru_logger.add(sys.stderr, level=level, format="{time:HH:mm:ss} datatrove: {message}",
                          filter=lambda record: record["level"].name != "SUCCESS")  # fmt: skip

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = originals[0](logging_dir, rank, local_rank, node_rank)
        console("WARNING")
        loguru_logger.add(logfile, level="DEBUG")
        return logfile

    def close_task_logger(logfile) -> None:
        originals[1](logfile)
        console("INFO")  # back to task progress ("3/8 tasks completed"), as in the launching process

    executor_base.add_task_logger, executor_base.close_task_logger = add_task_logger, close_task_logger
    console("INFO")
    try:
        yield
    finally:
        executor_base.add_task_logger, executor_base.close_task_logger = originals
        setup_default_logger()


def document_bytes(doc: Document) -> bytes:
    return doc.text.encode("utf-8")


@dataclass
class Layout:
    """Where everything lives under output_dir; .work/ holds what only a resumed run needs."""

    root: Path

    @property
    def documents(self) -> Path:
        return self.root / "documents"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def work(self) -> Path:
        return self.root / ".work"

    @property
    def rejected_root(self) -> Path:
        return self.root / "rejected"

    def rejected(self, reason_group: str) -> str:
        return str(self.rejected_root / reason_group)

    def data(self, stage: str) -> str:
        return str(self.work / "data" / stage)

    def scratch(self, stage: str) -> str:
        return str(self.work / "scratch" / stage)

    def logs(self, stage: str) -> str:
        return str(self.work / "logs" / stage)


def published_record(_writer: ParquetWriter, doc: Document) -> dict:
    """A flat row for documents/: text, id, url, date, language, ...; not the .work/ file it passed through."""
    return {"text": doc.text, "id": doc.id, **{k: v for k, v in doc.metadata.items() if k != "file_path"}}


def _writer(folder: str, adapter=None) -> ParquetWriter:
    return ParquetWriter(folder, output_filename="${rank}.parquet", adapter=adapter)


@dataclass
class Step:
    """One datatrove executor run: a named piece of a stage, with its own log folder and task count."""

    name: str
    pipeline: list
    tasks: int


class WebTextPipeline:
    def __init__(self, config: WebTextConfig, inputs: list[str]):
        config.validate()
        self.config = config
        self.files = expand_inputs(inputs)
        self.layout = Layout(Path(config.output_dir))
        self.tasks = config.tasks or min(len(self.files), TASKS_PER_WORKER * config.worker_count)
        self.words = word_tokenizer(config.word_tokenizer, (config.languages or ["en"])[0])

    def run(self) -> dict:
        """Run (or finish) every stage; returns the stats also written to stats.json."""
        self._claim_output_dir()
        started = time.perf_counter()
        steps = self.steps()
        with task_logs_to_files_only():
            for number, step in enumerate(steps, start=1):
                workers = min(step.tasks, self.config.worker_count)
                step_started = time.perf_counter()
                LocalPipelineExecutor(
                    step.pipeline,
                    tasks=step.tasks,
                    workers=workers,
                    logging_dir=self.layout.logs(step.name),
                    start_method="fork",
                ).run()
                logger.info("step %d/%d %s: %d tasks on %d workers, %.1f s", number, len(steps), step.name,
                            step.tasks, workers, time.perf_counter() - step_started)  # fmt: skip
        self._publish(Path(self.layout.data(self._outputs()[-1])))
        token_stats = self._tokenize()
        return write_report(self.layout, [s.name for s in steps], self.files, self.config.examples_per_reason,
                            token_stats, time.perf_counter() - started)  # fmt: skip

    def _outputs(self) -> list[str]:
        """The .work/data folder each stage writes; documents/ comes from the last."""
        return ["filtered"] + ["exact_unique"] * self.config.exact_dedup + ["unique"] * self.config.near_dedup

    def steps(self) -> list[Step]:
        """The executor runs, in order; each may run on any datatrove executor once the previous one is done."""
        config, layout, tasks = self.config, self.layout, self.tasks
        outputs = self._outputs()

        def output(name: str) -> ParquetWriter:
            return _writer(layout.data(name), published_record if name == outputs[-1] else None)

        steps = [Step("filter", self._filter_pipeline(output("filtered")), tasks)]
        current = layout.data("filtered")
        if config.exact_dedup:
            exact = ExactDedupConfig(content_getter=document_bytes)
            signatures, duplicates = layout.scratch("exact_signatures"), layout.scratch("exact_duplicates")
            steps += [
                Step("exact_signatures", [ParquetReader(current), ExactDedupSignature(signatures, exact)], tasks),
                Step("exact_find", [ExactFindDedups(signatures, duplicates, exact)], 1),
                Step("exact_dedup", [
                    ParquetReader(current),
                    ExactDedupFilter(duplicates, exact, exclusion_writer=_writer(layout.rejected("exact_duplicate"))),
                    Meter("exact_dedup"),
                    output("exact_unique"),
                ], tasks),
            ]  # fmt: skip
            current = layout.data("exact_unique")
        if config.near_dedup:
            minhash = MinhashConfig(
                n_grams=config.minhash_ngrams,
                num_buckets=config.minhash_buckets,
                hashes_per_bucket=config.minhash_hashes_per_bucket,
            )
            signatures, buckets, clusters = (layout.scratch(n) for n in ("minhash_signatures", "buckets", "clusters"))
            steps += [
                Step("near_signatures", [
                    ParquetReader(current), MinhashDedupSignature(signatures, config=minhash, language=self.words)
                ], tasks),
                Step("near_buckets", [MinhashDedupBuckets(signatures, buckets, config=minhash)], minhash.num_buckets),
                Step("near_clusters", [MinhashDedupCluster(buckets, clusters, config=minhash)], 1),
                Step("near_dedup", [
                    ParquetReader(current),
                    MinhashDedupFilter(clusters, exclusion_writer=_writer(layout.rejected("near_duplicate"))),
                    Meter("near_dedup"),
                    output("unique"),
                ], tasks),
            ]  # fmt: skip
        return steps

    def _filter_pipeline(self, output: ParquetWriter) -> list:
        config, layout, words = self.config, self.layout, self.words
        pipeline = [
            WebInputReader(
                self.files,
                config.max_page_bytes,
                config.max_invalid_chars,
                layout.rejected("read"),
                config.examples_per_reason,
            ),  # fmt: skip
            Meter("read"),
            MainTextExtractor(config.extractor, config.extract_timeout),
            Meter("extract"),
            PIIFormatter(remove_emails=config.scrub_emails, remove_ips=config.scrub_ips),
            LanguageFilter(config.languages, config.language_threshold, _writer(layout.rejected("language"))),
            Meter("language"),
        ]
        quality_filters = {  # config switch -> datatrove filter and its thresholds
            "gopher_repetition": (GopherRepetitionFilter, {}),
            "gopher_quality": (GopherQualityFilter, {
                "min_doc_words": config.min_doc_words,
                "max_doc_words": config.max_doc_words,
                "min_avg_word_length": config.min_avg_word_length,
                "max_avg_word_length": config.max_avg_word_length,
                "max_symbol_word_ratio": config.max_symbol_word_ratio,
                "max_bullet_lines_ratio": config.max_bullet_lines_ratio,
                "min_stop_words": config.min_stop_words,
            }),
            "c4_quality": (C4QualityFilter, {"min_words_per_line": config.c4_min_words_per_line}),
            "fineweb_quality": (FineWebQualityFilter, {
                "line_punct_thr": config.fineweb_line_punct_ratio,
                "short_line_thr": config.fineweb_short_line_ratio,
                "char_duplicates_ratio": config.fineweb_char_duplicates_ratio,
            }),
        }  # fmt: skip
        for name, (filter_class, thresholds) in quality_filters.items():
            if getattr(config, name):
                excluded = _writer(layout.rejected(name))
                pipeline.append(filter_class(**thresholds, exclusion_writer=excluded, language=words))
        return [*pipeline, Meter("quality"), output]

    def _claim_output_dir(self) -> None:
        """Refuse to resume into a folder started with other inputs or settings: its stages would mix."""
        root = self.layout.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise DataError(f"output_dir {root}: cannot write there ({error.strerror or error})") from None
        settings = dataclasses.asdict(self.config)
        for free in ("workers", "tokenizer", "output_dir", "examples_per_reason"):
            settings.pop(free)
        claim = {"inputs": [[f, os.path.getsize(f)] for f in self.files], "tasks": self.tasks, "settings": settings}
        run_file = root / RUN_FILE
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            changed = [key for key in ("inputs", "tasks") if previous.get(key) != claim[key]]
            changed += [f"settings.{k}" for k in settings if previous.get("settings", {}).get(k) != settings[k]]
            if changed:
                raise ConfigError(
                    f"output_dir {root} holds a run with other {', '.join(changed)}; "
                    "use a new output_dir, or the same inputs and settings to resume"
                )
            logger.info("resuming the run in %s: finished tasks are skipped", root)
        else:
            run_file.write_text(json.dumps(claim, indent=1))

    def _publish(self, last_output: Path) -> None:
        self.layout.documents.mkdir(parents=True, exist_ok=True)
        for file in sorted(last_output.glob("*.parquet")):
            os.replace(file, self.layout.documents / file.name)
        if not any(self.layout.documents.glob("*.parquet")):
            logger.warning("no document passed every stage; see report.md for what was dropped and why")

    def _tokenize(self) -> dict | None:
        if not self.config.tokenizer:
            return None
        if not any(self.layout.documents.glob("*.parquet")):
            raise DataError(f"{self.layout.documents}: no documents to tokenize")
        from fmkit.data.documents import TextSource
        from fmkit.data.shard_writer import write_token_shards

        source = TextSource(files=(str(self.layout.documents),))
        return write_token_shards(source, self.config.tokenizer, self.layout.tokens, workers=self.config.workers)
