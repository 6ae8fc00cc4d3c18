"""Word and sentence splitting for datatrove's filters and MinHash, without spaCy.

datatrove splits English with a blank spaCy pipeline: a heavy dependency and, measured here, about 50x
slower than this regex, which the Gopher/C4/FineWeb heuristics (tuned on space-separated text) don't need.
Languages written without spaces want datatrove's own tokenizers: `--word_tokenizer datatrove`.
"""

from __future__ import annotations

import regex
from datatrove.utils.text import TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer, simple_span_tokenize

_WORDS = regex.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
_SENTENCES = regex.compile(rf"(?:(?:\p{{Lu}}\.)|.)+?(?:[{regex.escape(''.join(TERMINAL_PUNCTUATION))}\n]+|$)")


class RegexWordTokenizer(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCES.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))


def word_tokenizer(kind: str, language: str) -> WordTokenizer:
    """`kind` 'regex' or 'datatrove' (datatrove's tokenizer for `language`)."""
    return RegexWordTokenizer() if kind == "regex" else load_word_tokenizer(language)
