"""From scraped WARC/HTML (or extracted JSONL) to a clean, deduplicated, tokenized pretraining corpus."""

from fmkit.webtext.config import WebTextConfig
from fmkit.webtext.pipeline import WebTextPipeline
from fmkit.webtext.sample_crawl import write_sample_crawl

__all__ = ["WebTextConfig", "WebTextPipeline", "write_sample_crawl"]
