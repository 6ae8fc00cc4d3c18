"""Main text out of HTML, without navigation, menus, cookie banners and footers.

trafilatura is the default (what FineWeb used); resiliparse's main-content extraction is the fast option.
trafilatura's own `deduplicate` stays off: it drops paragraphs seen in earlier pages of the same process,
which makes a page's text depend on its neighbours; deduplication is the dedup stages' job.
Each page runs in datatrove's extractor sandbox, so a page that hangs or crashes the parser is skipped on a
timeout instead of stalling the task. Documents read from JSONL are already text and pass straight through.
"""

from __future__ import annotations

import logging

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors.base import ExtractorSandbox


def trafilatura_text(html: str) -> str:
    from trafilatura import extract

    return extract(html, favor_precision=True, include_comments=False, deduplicate=False) or ""


def resiliparse_text(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, alt_texts=False, comments=False)


WARMUP_PAGE = "<html><body><p>Warm up.</p></body></html>"
ENGINES = {"trafilatura": trafilatura_text, "resiliparse": resiliparse_text}


class MainTextExtractor(PipelineStep):
    name = "extract"
    type = "🛢 - EXTRAC"

    def __init__(self, engine: str, timeout: float):
        super().__init__()
        self.engine = engine
        self.timeout = timeout

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        extract = ENGINES[self.engine]
        logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # it logs every unparsable page as an error
        extract(WARMUP_PAGE)  # import the engine here, so the sandbox's fork starts warm
        with ExtractorSandbox(timeout=self.timeout, warmup_text=WARMUP_PAGE) as sandbox:
            for doc in data:
                if doc.metadata.pop("format", "html") == "text":
                    yield doc
                    continue
                with self.track_time():
                    reason = None
                    try:
                        doc.text = sandbox.process_document(doc.text, extract).strip()
                    except TimeoutError:
                        reason = "extract_timeout"
                    except EOFError:
                        reason = "extractor_crashed"
                    except Exception:  # noqa: BLE001 - any parser failure on one page skips that page
                        reason = "extract_error"
                    if not reason and not doc.text:
                        reason = "no_main_text"
                if reason:
                    self.stat_update(f"dropped_{reason}")
                    continue
                yield doc
