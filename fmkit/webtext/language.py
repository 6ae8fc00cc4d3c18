"""Offline language identification with py3langid, whose model ships inside the package.

datatrove's LanguageFilter downloads fastText or GlotLID weights from the Hub at first use, which fails on a
machine without internet; py3langid (langid.py's model, 97 languages) gives calibrated probabilities offline.
"""

from __future__ import annotations

from functools import cache

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

IDENTIFIED_CHARS = 20_000  # the opening of a page decides its language; long pages cost no more


@cache
def identifier():
    """One model per process (about 0.7 s to load): forked workers inherit it instead of loading it per task."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageFilter(BaseFilter):
    name = "language"

    def __init__(self, languages: list[str], threshold: float, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.languages = frozenset(languages)
        self.threshold = threshold
        identifier()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        language, probability = identifier().classify(doc.text[:IDENTIFIED_CHARS])
        doc.metadata["language"] = language
        doc.metadata["language_score"] = round(float(probability), 4)
        if self.languages and language not in self.languages:
            return False, "other_language"
        if probability < self.threshold:
            return False, "language_uncertain"
        return True
