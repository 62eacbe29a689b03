"""Pages/s of the raw-dump reader (``masksearch.retrieval.wikidump``) on a dump made from the shared corpus.

The dump: the shared corpus's records grouped by title into pages (one paragraph a record, in file
order), each page dressed in the markup real articles carry (an infobox template, bold, a
``<ref>`` with a citation template, a file link, a table, a *See also* section, a category), plus
one redirect, one disambiguation page and one Talk: page per 50 articles; bz2 multistream, 100
pages a stream, as Wikimedia writes them.  Real enwiki articles are longer (~4 KB of wikitext on
average with heavier templates), so real pages/s will be lower; bytes/s of wikitext is the figure
that transfers.

Measured, in one run, as wall-clock pages/s and as pages per CPU-second of the reading process
(what one dedicated core does; the machine these figures come from is shared):
- ``ours``: ``read_wikidump`` -> passages (decompress, parse, clean, skip, chunk);
- ``naive``: the obvious alternative, ``mwxml`` + ``mwparserfromhell.parse(text).strip_code()`` on
  every page (no skipping, and ``<ref>`` contents, captions and categories left in the text);
- ``parse_only``: ``mwxml`` iteration alone (decompress + XML), the ceiling;
- ``ours`` with ``--shards N`` processes in parallel (page index i % N).

    .venv/bin/python benchmarks/bench_wikidump.py [--shards 2]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "wiki_passages.jsonl"


def make_pages(limit: int | None = None) -> list[dict]:
    by_title: dict[str, list[str]] = {}
    for line in open(CORPUS, encoding="utf-8"):
        r = json.loads(line)
        by_title.setdefault(r["title"], []).append(r["text"])
    pages, pid = [], 1
    for n, (title, paras) in enumerate(by_title.items()):
        if limit and n >= limit:
            break
        body = "\n\n".join(paras)
        words = body.split(" ", 6)
        lead = " ".join(words[:6])
        text = (f"{{{{Infobox page|name={title}|image=Img{pid}.png|caption=An image}}}}\n"
                f"'''{lead}''' {words[6] if len(words) > 6 else ''}"
                f"<ref>{{{{cite web|url=https://example.org/{pid}|title=Source {pid}|date=2020}}}}</ref>\n\n"
                f"[[File:Img{pid}.jpg|thumb|A caption]]\n"
                "{| class=\"wikitable\"\n|-\n! Year !! Value\n|-\n| 2001 || 12\n|}\n\n"
                f"== See also ==\n* [[Related {pid}]]\n\n== References ==\n{{{{reflist}}}}\n\n"
                f"[[Category:Pages {pid % 97}]]")
        pages.append({"id": pid, "title": title, "text": text})
        pid += 1
        if n % 50 == 49:
            pages.append({"id": pid, "title": f"{title} (alias)", "redirect": title, "text": f"#REDIRECT [[{title}]]"})
            pages.append({"id": pid + 1, "title": f"{title} (disambiguation)",
                          "text": f"'''{title}''' may refer to:\n* [[{title}]]\n{{{{disambiguation}}}}"})
            pages.append({"id": pid + 2, "title": f"Talk:{title}", "ns": 1, "text": "Discussion. ~~~~"})
            pid += 3
    return pages


def run_ours(path: str, shard: str | None = None) -> dict:
    from masksearch.retrieval.wikidump import read_wikidump
    from masksearch.utils.jsonl import ReadStats

    st = ReadStats()
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(1 for _ in read_wikidump(path, stats=st, shard=shard))
    return {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "passages": n,
            "articles": st.read, "skipped": dict(st.skipped)}


def run_naive(path: str) -> dict:
    import mwparserfromhell

    from masksearch.retrieval.wikidump import iter_pages

    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for page in iter_pages(path):
        for rev in page:
            if rev.text:
                mwparserfromhell.parse(rev.text).strip_code()
        n += 1
    return {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "pages": n}


def run_parse_only(path: str) -> dict:
    from masksearch.retrieval.wikidump import iter_pages

    t0, c0, n, nbytes = time.perf_counter(), time.process_time(), 0, 0
    for page in iter_pages(path):
        for rev in page:
            nbytes += len(rev.text or "")
        n += 1
    return {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "pages": n,
            "wikitext_bytes": nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_wikidump"))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N titles only")
    args = ap.parse_args()
    from masksearch.retrieval.wikidump import write_dump

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = str(work / "enwiki-shared-pages-articles-multistream.xml.bz2")
    pages = make_pages(args.limit)
    t0 = time.perf_counter()
    write_dump(pages, path, pages_per_stream=100)
    write_s = time.perf_counter() - t0
    n_pages = len(pages)

    base = run_parse_only(path)
    ours = run_ours(path)
    naive = run_naive(path)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.shards) as ex:
        parts = list(ex.map(run_ours, [path] * args.shards, [f"{i}/{args.shards}" for i in range(args.shards)]))
    shard_s = time.perf_counter() - t0
    assert sum(p["passages"] for p in parts) == ours["passages"]

    res = {
        "pages": n_pages, "articles": ours["articles"], "passages": ours["passages"],
        "skipped": ours["skipped"], "dump_mb": round(os.path.getsize(path) / 1e6, 2),
        "wikitext_mb": round(base["wikitext_bytes"] / 1e6, 2), "write_s": round(write_s, 1),
        "pages_per_s": round(n_pages / ours["s"], 1),
        "wikitext_mb_per_s": round(base["wikitext_bytes"] / 1e6 / ours["s"], 2),
        "naive_pages_per_s": round(n_pages / naive["s"], 1),
        "parse_only_pages_per_s": round(n_pages / base["s"], 1),
        f"pages_per_s_{args.shards}_shards": round(n_pages / shard_s, 1),
        "ours_over_naive": round(naive["s"] / ours["s"], 2),
        # per CPU-second of the reading process: what one dedicated core does (the machine is shared)
        "pages_per_cpu_s": round(n_pages / ours["cpu_s"], 1),
        "wikitext_mb_per_cpu_s": round(base["wikitext_bytes"] / 1e6 / ours["cpu_s"], 2),
        "naive_pages_per_cpu_s": round(n_pages / naive["cpu_s"], 1),
        "parse_only_pages_per_cpu_s": round(n_pages / base["cpu_s"], 1),
        "ours_over_naive_cpu": round(naive["cpu_s"] / ours["cpu_s"], 2),
        "load_avg": os.getloadavg(),
    }
    print(f"per CPU-second: ours {res['pages_per_cpu_s']} pages ({res['wikitext_mb_per_cpu_s']} MB of "
          f"wikitext), naive {res['naive_pages_per_cpu_s']}, mwxml alone {res['parse_only_pages_per_cpu_s']}")
    print(f"ours {res['pages_per_s']} pages/s ({res['wikitext_mb_per_s']} MB/s of wikitext), naive "
          f"strip_code {res['naive_pages_per_s']}, mwxml alone {res['parse_only_pages_per_s']}, "
          f"{args.shards} shards {res[f'pages_per_s_{args.shards}_shards']}")
    os.remove(path)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
