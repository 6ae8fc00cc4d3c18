"""Write a small synthetic crawl in real WARC files, to try data_scripts/web_text.py offline.

python data_scripts/sample_crawl.py sample-crawl/ --articles 300

Articles of real English prose inside a news site's boilerplate, plus what a crawl holds: copies, near
copies, other languages, spam, e-mail and IP addresses, and damaged records (see fmkit/webtext/sample_crawl.py).
"""

from __future__ import annotations

import argparse

from fmkit.webtext.sample_crawl import write_sample_crawl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="folder for the .warc.gz files")
    parser.add_argument("--articles", type=int, default=300, help="unique articles (default: 300)")
    parser.add_argument("--files", type=int, default=4, help="WARC files to spread them over (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    crawl = write_sample_crawl(args.output_dir, articles=args.articles, files=args.files, seed=args.seed)
    print(f"{len(crawl.files)} WARC files in {args.output_dir}")


if __name__ == "__main__":
    main()
