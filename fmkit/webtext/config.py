"""Settings of the web-text pipeline: one typed dataclass, every threshold a flag."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from fmkit.errors import ConfigError


@dataclass
class WebTextConfig:
    """Turn WARC files, saved HTML pages or JSONL text into a clean, deduplicated pretraining corpus."""

    output_dir: str = ""
    """Folder for documents/, stats.json, report.md (and tokens/); rerunning resumes."""
    workers: int = 0
    """Processes running pipeline tasks (0: one per core)."""
    tasks: int = 0
    """Pieces the input is split into, by file (0: one per input file, at most 8 per worker). A rerun must
    keep it."""

    # Reading
    max_page_bytes: int = 5_000_000
    """HTML pages larger than this are skipped as too large."""
    max_invalid_chars: float = 0.01
    """Largest share of undecodable bytes a page may have; a page above it is skipped as invalid encoding."""

    # Extraction
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    """Main-text extractor: trafilatura (FineWeb's choice, more precise) or resiliparse (much faster)."""
    extract_timeout: float = 5.0
    """Seconds an extractor may spend on one page before the page is skipped."""

    # Language identification (py3langid, offline)
    languages: list[str] = field(default_factory=lambda: ["en"])
    """ISO 639-1 codes to keep; an empty list keeps every language."""
    language_threshold: float = 0.65
    """Lowest language-identification probability to keep a document."""

    # Quality filters (datatrove's Gopher, C4 and FineWeb heuristics)
    gopher_repetition: bool = True
    """Drop documents with repeated lines, paragraphs or n-grams (Gopher)."""
    gopher_quality: bool = True
    """Drop documents failing Gopher's length, word-length, symbol, bullet and stop-word rules."""
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: int = 3
    max_avg_word_length: int = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    min_stop_words: int = 2
    c4_quality: bool = True
    """Drop lines without terminal punctuation, javascript, cookie/policy and lorem-ipsum lines (C4)."""
    c4_min_words_per_line: int = 3
    fineweb_quality: bool = True
    """Drop documents with too many short lines, duplicated lines or line breaks (FineWeb)."""
    fineweb_line_punct_ratio: float = 0.12
    fineweb_short_line_ratio: float = 0.67
    fineweb_char_duplicates_ratio: float = 0.01
    word_tokenizer: Literal["regex", "datatrove"] = "regex"
    """Word splitting for the filters and MinHash: regex (fast, languages written with spaces) or datatrove's
    per-language tokenizers (needs spaCy and friends installed)."""

    # PII
    scrub_emails: bool = True
    scrub_ips: bool = True

    # Deduplication
    exact_dedup: bool = True
    """Keep one document per identical text."""
    near_dedup: bool = True
    """Keep one document per MinHash-LSH cluster of near duplicates."""
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8

    # Output
    tokenizer: str | None = None
    """Tokenize the result into tokens/ for recipes/clm.py and recipes/mlm.py (a Hub name or a folder)."""
    examples_per_reason: int = 3
    """Rejected documents shown per reason in report.md."""

    def validate(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is required, e.g. --output_dir corpus/")
        for name in ("workers", "tasks", "examples_per_reason"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} {getattr(self, name)}: expected 0 or more")
        for name in ("max_page_bytes", "minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: expected a positive integer")
        if not 0 <= self.language_threshold <= 1:
            raise ConfigError(f"language_threshold {self.language_threshold}: expected a probability in [0, 1]")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1
