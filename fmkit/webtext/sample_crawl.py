"""A small synthetic crawl in real WARC files, to try the pipeline offline and to test what each stage does.

Articles are real English prose (paragraphs of CPython's bundled reference documentation, combined at random)
inside the boilerplate of a news site: menus, cookie banner, sidebar, footer. Around them sits what a crawl
holds: copies, near copies, other languages, spam, lorem ipsum, e-mail and IP addresses, and damaged records.
The URL of every page names what it is, so tests can check each stage's verdict page by page.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

FOREIGN = {
    "de": "Der Stadtrat hat am Dienstag beschlossen, die Bibliothek im Zentrum länger zu öffnen. Viele Familien "
    "hatten sich in den letzten Monaten darüber beschwert, dass die Räume am Abend geschlossen sind. Die "
    "neuen Öffnungszeiten gelten ab dem ersten Januar, und zusätzliche Mitarbeiter werden eingestellt. "
    "Außerdem sollen die Leseräume renoviert werden, damit Schüler dort in Ruhe lernen können. Die Kosten "
    "für das Projekt werden aus dem Haushalt der Stadt und aus Spenden der Bürger bezahlt.",
    "fr": "Le conseil municipal a décidé mardi d'ouvrir la bibliothèque du centre plus longtemps. De nombreuses "
    "familles s'étaient plaintes ces derniers mois que les salles soient fermées le soir. Les nouveaux "
    "horaires entreront en vigueur le premier janvier et des employés supplémentaires seront embauchés. "
    "Les salles de lecture seront également rénovées afin que les élèves puissent y travailler au calme. "
    "Le coût du projet sera financé par le budget de la ville et par les dons des habitants.",
    "es": "El ayuntamiento decidió el martes abrir la biblioteca del centro durante más horas. Muchas familias "
    "se habían quejado en los últimos meses de que las salas estaban cerradas por la noche. Los nuevos "
    "horarios entrarán en vigor el primero de enero y se contratarán empleados adicionales. Además, las "
    "salas de lectura serán renovadas para que los estudiantes puedan estudiar allí con tranquilidad. El "
    "coste del proyecto se pagará con el presupuesto de la ciudad y con donaciones de los vecinos.",
}
SPAM = "Buy cheap watches online best price free shipping casino bonus click here now "
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip. "
)
EMAILS = ("jane.doe@mail.example.net", "press-office@city-news.example.org")
PUBLIC_IPS = ("93.184.216.34", "151.101.1.69")
_PLAIN = re.compile(r"[A-Za-z0-9 ,.;:'’()-]+")


@dataclass
class Page:
    url: str
    payload: bytes
    content_type: str
    status: str = "200 OK"


@dataclass
class SampleCrawl:
    """The files written and the URLs of each kind of page, for checking what the pipeline keeps."""

    files: list[Path] = field(default_factory=list)
    articles: dict[str, str] = field(default_factory=dict)  # url -> the article's paragraphs, joined by newlines
    exact_copies: dict[str, str] = field(default_factory=dict)  # copy url -> original url
    near_copies: dict[str, str] = field(default_factory=dict)  # near-copy url -> original url
    foreign: list[str] = field(default_factory=list)
    spam: list[str] = field(default_factory=list)
    with_pii: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # url -> the reason the reader should give


def prose_paragraphs() -> list[str]:
    """Paragraphs of plain prose from CPython's reference topics: no code, no symbols, no grammar rules."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(block.split()).lstrip("* ")
            if len(text.split()) >= 20 and text.endswith(".") and _PLAIN.fullmatch(text) and "()" not in text:
                paragraphs.append(text)
    return paragraphs


def page(title: str, body_paragraphs: list[str], site: str = "City News") -> str:
    """An article inside a site's boilerplate, the way a real page wraps its main text."""
    nav = "".join(f'<li><a href="/{s.lower()}">{s}</a></li>' for s in ("Home", "World", "Sport", "Culture", "Login"))
    related = "".join(f'<li><a href="/story/{i}">Read more stories like this one</a></li>' for i in range(5))
    body = "".join(f"<p>{escape(p)}</p>" for p in body_paragraphs)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)}</title></head><body>'
        f'<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience. '
        f"By using this site you accept our cookie policy. <button>Accept all cookies</button></div>"
        f'<header><div class="logo">{site}</div><nav class="menu"><ul>{nav}</ul></nav></header>'
        f'<main><article><h1>{escape(title)}</h1><p class="byline">By Staff Writer</p>{body}</article></main>'
        f'<aside class="sidebar"><h3>Related</h3><ul>{related}</ul></aside>'
        f'<footer><p>Copyright 2026 {site}. All rights reserved.</p><a href="/privacy">Privacy policy</a> '
        f'<a href="/terms">Terms of use</a> <a href="/contact">Contact us</a></footer></body></html>'
    )


def write_sample_crawl(folder: str | Path, articles: int = 24, files: int = 2, seed: int = 0,
                       broken: bool = True) -> SampleCrawl:  # fmt: skip
    """Write `articles` unique articles plus the crawl's usual clutter across `files` .warc.gz files.

    With `broken`, one more file is truncated mid-record, and the others hold damaged records.
    """
    rng = random.Random(seed)
    paragraphs = prose_paragraphs()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    crawl = SampleCrawl()
    pages: list[Page] = []

    def html(url: str, text: str, content_type: str = "text/html; charset=utf-8") -> None:
        pages.append(Page(url, text.encode("utf-8"), content_type))

    originals = []
    for i in range(articles):
        chosen = rng.sample(paragraphs, 6)
        url = f"https://news.example.com/article/{i}"
        crawl.articles[url] = "\n".join(chosen)
        originals.append((url, chosen))
        html(url, page(f"Notes on the language, part {i}", chosen))
    for i, (url, chosen) in enumerate(originals[: max(1, articles // 6)]):
        copy = f"https://mirror.example.com/copy/{i}"
        crawl.exact_copies[copy] = url
        html(copy, page(f"Notes on the language, part {i}", chosen))  # the very page of article i
    for i, (url, chosen) in enumerate(originals[-max(1, articles // 6) :]):
        near = f"https://aggregator.example.com/near/{i}"
        crawl.near_copies[near] = url
        edited = [chosen[0].replace(" the ", " this ", 2), *chosen[1:]]
        html(near, page(f"Reposted: notes on the language, part {i}", edited, site="Daily Aggregator"))
    for language, text in FOREIGN.items():
        url = f"https://{language}.example.com/bibliothek"
        crawl.foreign.append(url)
        html(url, page(text.split(".")[0], [text] * 2))
    for i in range(2):
        url = f"https://spam.example.com/offer/{i}"
        crawl.spam.append(url)
        html(url, page("Best offers", [SPAM * 20] * 4))
    crawl.spam.append("https://lorem.example.com/template")
    html(crawl.spam[-1], page("Template page", [LOREM, *rng.sample(paragraphs, 5)]))
    for i, (email, ip) in enumerate(zip(EMAILS, PUBLIC_IPS, strict=True)):
        url = f"https://contact.example.com/press/{i}"
        crawl.with_pii.append(url)
        chosen = rng.sample(paragraphs, 5)
        contact = f"For questions about this notice, write to {email} or reach our server at {ip} any day."
        crawl.articles[url] = "\n".join([*chosen, contact])
        html(url, page(f"Press notice {i}", [*chosen, contact]))
    if broken:
        _add_broken(pages, crawl, rng, paragraphs)

    order = list(range(len(pages)))
    rng.shuffle(order)
    for f in range(files):
        path = folder / f"crawl-{f:02d}.warc.gz"
        path.write_bytes(_warc_bytes(path.name, [pages[i] for i in order[f::files]], with_resource=broken))
        crawl.files.append(path)
    if broken:
        crawl.files.append(_truncated_file(folder, crawl, rng, paragraphs))
    return crawl


def _add_broken(pages: list[Page], crawl: SampleCrawl, rng: random.Random, paragraphs: list[str]) -> None:
    def add(url: str, payload: bytes, content_type: str, reason: str, status: str = "200 OK") -> None:
        pages.append(Page(url, payload, content_type, status))
        crawl.broken[url] = reason

    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + rng.randbytes(2000)
    add("https://files.example.com/report.pdf", pdf, "text/html", "binary_payload")
    add("https://files.example.com/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(500), "image/png", "not_html")
    add("https://news.example.com/missing", b"<html>Not found</html>", "text/html", "http_status", "404 Not Found")
    add("https://news.example.com/empty", b"   \n", "text/html", "empty_page")
    garbled = bytes(rng.randrange(128, 256) for _ in range(3000))
    add("https://news.example.com/garbled", garbled, "text/html; charset=utf-8", "invalid_encoding")
    add("https://news.example.com/huge", page("Everything", paragraphs * 4).encode(), "text/html", "too_large")
    latin = "https://news.example.com/latin1"
    chosen = [*rng.sample(paragraphs, 5), "The café served crème brûlée to every visitor who asked politely."]
    crawl.articles[latin] = "\n".join(chosen)
    cp1252 = page("Café notes", chosen).replace('charset="utf-8"', 'charset="windows-1252"').encode("cp1252")
    pages.append(Page(latin, cp1252, "text/html; charset=windows-1252"))


def _warc_bytes(name: str, pages: list[Page], with_resource: bool = False, warcinfo: bool = True) -> bytes:
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    if warcinfo:
        writer.write_record(writer.create_warcinfo_record(name, {"software": "fmkit sample crawl"}))
    for item in pages:
        headers = StatusAndHeaders(item.status, [("Content-Type", item.content_type)], protocol="HTTP/1.1")
        record = writer.create_warc_record(item.url, "response", payload=io.BytesIO(item.payload),
                                           http_headers=headers)  # fmt: skip
        writer.write_record(record)
    if with_resource:
        note = writer.create_warc_record("urn:fmkit:note", "resource", payload=io.BytesIO(b"a crawl note"),
                                         warc_content_type="text/plain")  # fmt: skip
        writer.write_record(note)
    return buffer.getvalue()


def _truncated_file(folder: Path, crawl: SampleCrawl, rng: random.Random, paragraphs: list[str]) -> Path:
    """A download cut short: whole records first, then a record whose gzip member stops half way."""
    whole = []
    for i in range(2):
        url = f"https://news.example.com/before-cut/{i}"
        chosen = rng.sample(paragraphs, 6)
        crawl.articles[url] = "\n".join(chosen)
        whole.append(Page(url, page(f"Before the cut {i}", chosen).encode(), "text/html; charset=utf-8"))
    cut = Page("https://news.example.com/cut", page("Cut", rng.sample(paragraphs, 6)).encode(), "text/html")
    crawl.broken[cut.url] = "damaged_file"
    path = folder / "crawl-cut.warc.gz"
    last = _warc_bytes(path.name, [cut], warcinfo=False)
    path.write_bytes(_warc_bytes(path.name, whole) + last[: len(last) // 2])
    return path
