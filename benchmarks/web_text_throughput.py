"""Web-text pipeline vs a plain single-process loop over the same stages and libraries, on a generated crawl.

python benchmarks/web_text_throughput.py --articles 2000 --files 8 --workers 2

fmkit runs data_scripts/web_text.py's pipeline (datatrove's local executor, `--workers` processes); the
baseline is the loop a user would write: warcio → trafilatura → PII → py3langid → datatrove's quality filters
called directly → a set of SHA-1 digests → datasketch MinHash LSH (`pip install datasketch`). Both split words
with the same regex. Per stage: documents/s and MB/s per core (core-seconds spent in the stage; MB of the
text entering it); end to end: response records/s and HTML MB/s by wall clock.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import machine  # benchmarks/ is on sys.path when a script in it runs

from fmkit.webtext.config import WebTextConfig
from fmkit.webtext.pipeline import WebTextPipeline
from fmkit.webtext.sample_crawl import write_sample_crawl

STAGES = ("read", "extract", "language", "quality", "exact_dedup", "near_dedup")


def run_fmkit(crawl: Path, out: Path, workers: int, extractor: str) -> dict:
    config = WebTextConfig(output_dir=str(out), workers=workers, extractor=extractor)
    stats = WebTextPipeline(config, [str(crawl)]).run()
    read = stats["stages"][0]
    rows, bytes_in = [], read["bytes_out"]
    for stage in stats["stages"]:
        documents_in = stage["documents_in"] - (stage["rejected"].get("not_a_response", 0) if stage is read else 0)
        rows.append({"stage": stage["stage"], "documents": documents_in, "seconds": stage["seconds"],
                     "bytes": bytes_in, "kept": stage["documents_out"]})  # fmt: skip
        bytes_in = stage["bytes_out"]
    return {"rows": rows, "wall": stats["wall_seconds"], "pages": rows[0]["documents"], "html_bytes": read["bytes_out"],
            "kept": stats["output"]["documents"]}  # fmt: skip


def run_baseline(crawl: Path, extractor: str) -> dict:
    """One process, one stage after another per page, as a script without a pipeline framework would."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        sys.exit("the baseline needs datasketch: pip install datasketch")
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    from warcio.archiveiterator import ArchiveIterator

    from fmkit.webtext.extract import ENGINES
    from fmkit.webtext.words import RegexWordTokenizer

    words = RegexWordTokenizer()
    extract, pii = ENGINES[extractor], PIIFormatter()
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    filters = [GopherRepetitionFilter(language=words), GopherQualityFilter(language=words),
               C4QualityFilter(language=words), FineWebQualityFilter(language=words)]  # fmt: skip
    seen, lsh = set(), MinHashLSH(num_perm=112, params=(14, 8))
    seconds, documents, sizes = defaultdict(float), defaultdict(int), defaultdict(int)
    kept = 0

    def timed(stage: str, text: str):
        documents[stage] += 1
        sizes[stage] += len(text.encode()) if text else 0
        return time.perf_counter()

    started = time.perf_counter()
    for path in sorted(crawl.glob("*.warc.gz")):
        with gzip.open(path, "rb") as stream:
            records = ArchiveIterator(stream)
            while True:
                t = time.perf_counter()
                try:
                    record = next(records)
                except (StopIteration, EOFError, OSError):
                    break
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                documents["read"] += 1
                content_type = record.http_headers.get_header("Content-Type") or ""
                charset = re.search(r"charset=([\w-]+)", content_type)
                html = record.content_stream().read().decode(charset.group(1) if charset else "utf-8", "replace")
                seconds["read"] += time.perf_counter() - t
                if not content_type.startswith("text/html") or not html.strip() or html.startswith("%PDF"):
                    continue
                sizes["read"] += len(html.encode())
                t = timed("extract", html)
                text = extract(html)
                seconds["extract"] += time.perf_counter() - t
                if not text:
                    continue
                t = timed("language", text)
                text = pii.format(text)
                language, probability = identifier.classify(text)
                seconds["language"] += time.perf_counter() - t
                if language != "en" or probability < 0.65:
                    continue
                t = timed("quality", text)
                doc = Document(text=text, id=str(documents["read"]))
                passed = all(f.filter(doc) is True for f in filters)
                seconds["quality"] += time.perf_counter() - t
                if not passed:
                    continue
                t = timed("exact_dedup", doc.text)
                digest = hashlib.sha1(doc.text.encode()).digest()
                duplicate = digest in seen
                seen.add(digest)
                seconds["exact_dedup"] += time.perf_counter() - t
                if duplicate:
                    continue
                t = timed("near_dedup", doc.text)
                tokens = re.findall(r"\w+", doc.text.lower())
                minhash = MinHash(num_perm=112)
                minhash.update_batch([" ".join(tokens[i : i + 5]).encode() for i in range(max(1, len(tokens) - 4))])
                duplicate = bool(lsh.query(minhash))
                if not duplicate:
                    lsh.insert(doc.id, minhash)
                seconds["near_dedup"] += time.perf_counter() - t
                kept += not duplicate
    wall = time.perf_counter() - started
    rows = [{"stage": s, "documents": documents[s], "seconds": seconds[s], "bytes": sizes[s]} for s in STAGES]
    return {"rows": rows, "wall": wall, "pages": documents["read"], "html_bytes": sizes["read"], "kept": kept}


def table(title: str, run: dict) -> str:
    header = "| stage | docs in | core-s | docs/s per core | MB/s per core |"
    lines = [f"**{title}**", "", header, "|---|---:|---:|---:|---:|"]
    for row in run["rows"]:
        rate = row["documents"] / row["seconds"] if row["seconds"] else float("inf")
        mb = row["bytes"] / 1e6 / row["seconds"] if row["seconds"] else float("inf")
        lines.append(f"| {row['stage']} | {row['documents']} | {row['seconds']:.1f} | {rate:.0f} | {mb:.2f} |")
    slowest = min(run["rows"], key=lambda r: r["documents"] / r["seconds"] if r["seconds"] else float("inf"))
    lines += ["", f"slowest stage: {slowest['stage']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extractor", default="trafilatura", choices=("trafilatura", "resiliparse"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        crawl = Path(tmp) / "crawl"
        write_sample_crawl(crawl, articles=args.articles, files=args.files)
        on_disk = sum(p.stat().st_size for p in crawl.iterdir()) / 1e6
        fmkit = run_fmkit(crawl, Path(tmp) / "out", args.workers, args.extractor)
        baseline = run_baseline(crawl, args.extractor)
    print(f"machine: {machine()}")
    print(f"crawl: {fmkit['pages']} response records, {fmkit['html_bytes'] / 1e6:.1f} MB of HTML "
          f"({on_disk:.1f} MB gzipped, {args.files} files); extractor {args.extractor}\n")  # fmt: skip
    print(table(f"fmkit, {args.workers} workers", fmkit) + "\n")
    print(table("baseline, one process", baseline) + "\n")
    for name, run, cores in (("fmkit", fmkit, args.workers), ("baseline", baseline, 1)):
        pages, mb = run["pages"] / run["wall"], run["html_bytes"] / 1e6 / run["wall"]
        print(f"{name}: {run['wall']:.1f} s wall, {pages:.1f} pages/s ({pages / cores:.1f} per core), "
              f"{mb:.2f} MB/s of HTML; kept {run['kept']} documents")  # fmt: skip
    ratio = baseline["wall"] / fmkit["wall"]
    print(f"\nend to end fmkit / baseline: {ratio:.2f}x wall throughput, {ratio / args.workers:.2f}x per core")


if __name__ == "__main__":
    main()
