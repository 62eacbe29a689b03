"""The raw Wikipedia dump, read as a stream: ``enwiki-*-pages-articles*.xml.bz2`` -> passages.

``read_wikidump(path, chunk_words, stats, shard=None)`` (the ``wikidump`` corpus format; ``--corpus``
picks it for ``*.xml.bz2`` / ``*.xml`` files):

- **bz2, multistream-aware**: the file is decompressed as it is read, stream after stream
  (Python's ``bz2`` reads concatenated streams, the layout of ``...-multistream.xml.bz2``, where
  every stream holds 100 pages); nothing is unpacked to disk or held in memory beyond one page;
- **pages** parsed by ``mwxml`` (the Wikimedia research team's dump reader), wikitext cleaned by
  ``mwparserfromhell``: templates, ``<ref>``, tables, galleries, math, comments, file/image and
  category links are dropped; links keep their text; bold/italic markup goes; headings are dropped
  and the sections *See also*, *References*, *Notes*, *External links*, *Further reading*... are
  cut; each remaining paragraph becomes a line;
- **skipped and counted** (``stats.skipped``): ``redirect``, ``disambiguation`` (a disambiguation
  template such as ``{{disambiguation}}``/``{{dab}}``/``{{hndis}}``, or a title ending in
  ``(disambiguation)``), ``namespace`` (anything outside the main namespace 0: Talk:, User:,
  Wikipedia:, File:, Template:, Category:...), ``empty_text`` (nothing left after cleaning);
- **passages** chunked by the corpus module's chunker (the ``_emit`` every reader uses), ids
  ``wiki<page id>`` as for WikiExtractor output (``wiki<id>#2``... for later chunks);
- **shardable**: ``shard="i/n"`` keeps pages whose index in the dump (counting every ``<page>``)
  is ``i`` mod ``n``; the other pages are read past without being cleaned, which is the expensive
  part.  The shards' passages and counts add up to the whole.

Needs the ``wikidump`` extra (``pip install 'masksearch[wikidump]'``: mwxml, mwparserfromhell).
``write_dump(pages, path)`` writes a small MediaWiki XML dump (bz2, several streams) for tests and
the benchmark.
"""

from __future__ import annotations

import bz2
import os
import re
from typing import Any, Iterable, Iterator
from xml.sax.saxutils import escape

from masksearch.retrieval.corpus import CorpusError, Passage, _emit
from masksearch.utils.jsonl import ReadStats, in_shard, parse_shard

DROP_TAGS = {"ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "score",
             "imagemap", "syntaxhighlight", "source", "pre", "graph", "mapframe", "templatedata",
             "noinclude", "includeonly", "onlyinclude", "hiero", "inputbox", "poem"}
DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", ":category:", "wikt:", "wiktionary:")
SKIP_SECTIONS = {"see also", "references", "notes", "external links", "further reading", "sources",
                 "bibliography", "footnotes", "citations", "notes and references", "references and notes"}
_DISAMBIG = re.compile(r"\{\{\s*(?:disambiguation|disambig|dab|disamb|dis|hndis|geodis|numberdis|schooldis|"
                       r"mathdab|hospitaldis|roaddis|set index article|letter-number combination disambiguation)"
                       r"\s*(?:\||\}\})", re.IGNORECASE)
_REDIRECT = re.compile(r"^\s*#\s*redirect", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\u00a0]+")


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise CorpusError(f"reading a Wikipedia XML dump needs {module}: pip install 'masksearch[wikidump]' "
                          f"(mwxml, mwparserfromhell)") from e


def is_disambiguation(title: str, wikitext: str) -> bool:
    return title.rstrip().endswith("(disambiguation)") or bool(_DISAMBIG.search(wikitext))


def clean_wikitext(wikitext: str) -> str:
    """Wikitext -> plain text, one paragraph a line (see the module doc for what is dropped)."""
    mwp = _need("mwparserfromhell")
    code = mwp.parse(wikitext)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in DROP_TAGS:
            try:
                code.remove(tag)
            except ValueError:  # inside a node already removed
                pass
    for link in code.filter_wikilinks(recursive=True):
        if str(link.title).strip().lower().startswith(DROP_LINK_PREFIXES):
            try:
                code.remove(link)
            except ValueError:
                pass
    out: list[str] = []
    for section in code.get_sections(flat=True, include_lead=True):
        headings = section.filter_headings(recursive=False)
        if headings:
            name = headings[0].title.strip_code().strip().lower()
            if name in SKIP_SECTIONS:
                continue
            section.remove(headings[0])
        text = section.strip_code(normalize=True, collapse=True, keep_template_params=False)
        for line in text.splitlines():
            line = _SPACES.sub(" ", line).strip()
            # list bullets and indents that strip_code leaves, and leftover table/template debris
            line = line.lstrip("*#:; ").strip()
            if len(line) > 1 and not line.startswith(("{|", "|}", "|-", "!")):
                out.append(line)
    return "\n".join(out)


def _open(path: str):
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")  # reads every stream of a multistream file in turn
    return open(path, "rb")


def iter_pages(path: str) -> Iterator[Any]:
    """``mwxml`` pages of a dump, streamed."""
    mwxml = _need("mwxml")
    with _open(path) as f:
        try:
            dump = mwxml.Dump.from_file(f)
        except Exception as e:
            raise CorpusError(f"{path} is not a MediaWiki XML dump ({type(e).__name__}: {e})") from e
        yield from dump


def read_wikidump(path: str | os.PathLike, chunk_words: int = 100, stats: ReadStats | None = None,
                  shard: str | tuple[int, int] | None = None) -> Iterator[Passage]:
    """Stream the articles of a MediaWiki XML dump as passages (see the module doc)."""
    stats = stats if stats is not None else ReadStats()
    path = str(path)
    if not os.path.exists(path):
        raise CorpusError(f"corpus not found: {path}")
    shard_t = shard if isinstance(shard, tuple) else parse_shard(shard)
    for i, page in enumerate(iter_pages(path)):
        if not in_shard(i, shard_t):
            for _ in page:  # read past its revisions, uncleaned
                pass
            continue
        text = None
        for rev in page:  # pages-articles holds one revision; keep the last
            text = rev.text
        title = page.title or ""
        if page.namespace != 0:
            stats.skipped["namespace"] += 1
            continue
        if page.redirect or (text and _REDIRECT.match(text)):
            stats.skipped["redirect"] += 1
            continue
        if not text:
            stats.skipped["empty_text"] += 1
            continue
        if is_disambiguation(title, text):
            stats.skipped["disambiguation"] += 1
            continue
        try:
            plain = clean_wikitext(text)
        except Exception:  # a page the parser cannot handle: counted, never fatal
            stats.skipped["unparsable"] += 1
            continue
        yield from _emit(f"wiki{page.id}", title, plain, chunk_words, stats)


# ---------------------------------------------------------------------------- writing (tests, bench)

def write_dump(pages: Iterable[dict[str, Any]], path: str | os.PathLike, pages_per_stream: int = 100) -> int:
    """Write ``pages`` (dicts ``{id, title, text[, ns, redirect]}``, ``text`` in wikitext) as a
    MediaWiki export XML file, bz2-compressed as a multistream file (header stream, then
    ``pages_per_stream`` pages a stream, then the footer), like Wikimedia's dumps.  Returns the
    number of pages written."""
    head = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">\n'
            "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
            "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n"
            "    <generator>MediaWiki 1.44.0</generator>\n    <case>first-letter</case>\n"
            '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
            '      <namespace key="1" case="first-letter">Talk</namespace>\n'
            '      <namespace key="4" case="first-letter">Wikipedia</namespace>\n'
            '      <namespace key="14" case="first-letter">Category</namespace>\n'
            "    </namespaces>\n  </siteinfo>\n")
    n = 0
    with open(path, "wb") as out:
        out.write(bz2.compress(head.encode("utf-8")))
        buf: list[str] = []

        def flush() -> None:
            if buf:
                out.write(bz2.compress("".join(buf).encode("utf-8")))
                buf.clear()

        for p in pages:
            redirect = f'    <redirect title="{escape(p["redirect"], {chr(34): "&quot;"})}" />\n' if p.get("redirect") else ""
            buf.append(f"  <page>\n    <title>{escape(p['title'])}</title>\n    <ns>{p.get('ns', 0)}</ns>\n"
                       f"    <id>{p['id']}</id>\n{redirect}    <revision>\n      <id>{1000000 + int(p['id'])}</id>\n"
                       f"      <timestamp>2026-11-01T00:00:00Z</timestamp>\n"
                       f"      <contributor><username>x</username><id>1</id></contributor>\n"
                       f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
                       f'      <text bytes="{len(p["text"].encode("utf-8"))}" xml:space="preserve">'
                       f"{escape(p['text'])}</text>\n    </revision>\n  </page>\n")
            n += 1
            if len(buf) >= pages_per_stream:
                flush()
        flush()
        out.write(bz2.compress(b"</mediawiki>\n"))
    return n


__all__ = ["read_wikidump", "clean_wikitext", "is_disambiguation", "iter_pages", "write_dump"]
