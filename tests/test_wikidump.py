"""The raw-dump reader on a small multistream dump written from the shared corpus."""

from __future__ import annotations

import bz2
import json
from itertools import islice

import pytest

pytest.importorskip("mwxml")
pytest.importorskip("mwparserfromhell")

from masksearch.retrieval import build_index, make_retriever  # noqa: E402
from masksearch.retrieval.corpus import chunk_text, detect_format, read_corpus  # noqa: E402
from masksearch.retrieval.wikidump import clean_wikitext, read_wikidump, write_dump  # noqa: E402
from masksearch.utils.jsonl import ReadStats  # noqa: E402


def _wikitext(rec: dict, i: int) -> str:
    """The record's text dressed in the markup real articles carry (all of it must go)."""
    words = rec["text"].split()
    head, tail = " ".join(words[:6]), " ".join(words[6:])
    return (f"{{{{Infobox thing|name={rec['title']}|image=x.png}}}}\n'''{head}''' {tail}"
            f"<ref>{{{{cite web|url=http://example.org/{i}|title=Source}}}}</ref>\n\n"
            f"[[File:Pic{i}.jpg|thumb|A caption that must not appear]]\n"
            "{| class=\"wikitable\"\n|-\n| cellA || cellB\n|}\n"
            f"== See also ==\n* [[Something else {i}]]\n\n[[Category:Things {i}]]")


@pytest.fixture(scope="module")
def dump(corpus_path, tmp_path_factory):
    recs = [json.loads(line) for line in islice(open(corpus_path, encoding="utf-8"), 120)]
    pages = [{"id": 10 + i, "title": r["title"], "text": _wikitext(r, i)} for i, r in enumerate(recs)]
    pages.insert(3, {"id": 5, "title": "Kiss & Tell", "redirect": "Kiss and Tell (1945 film)",
                     "text": "#REDIRECT [[Kiss and Tell (1945 film)]]"})
    pages.insert(7, {"id": 6, "title": "Mercury", "text": "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n"
                                                        "{{disambiguation}}"})
    pages.insert(9, {"id": 7, "title": "Talk:Mercury", "ns": 1, "text": "Is this page any good? ~~~~"})
    path = tmp_path_factory.mktemp("dump") / "enwiki-20261101-pages-articles-multistream.xml.bz2"
    write_dump(pages, path, pages_per_stream=50)
    return path, recs


def test_reads_articles_skips_the_rest_and_cleans(dump):
    path, recs = dump
    # really several bz2 streams
    raw = path.read_bytes()
    assert raw.count(b"BZh9") >= 4 and bz2.decompress(raw).count(b"<page>") == 123
    assert detect_format(str(path)) == "wikidump"
    stats = ReadStats()
    passages = list(read_corpus(str(path), stats=stats))
    assert stats.read == 120
    assert dict(stats.skipped) == {"redirect": 1, "disambiguation": 1, "namespace": 1}
    first = [p for p in passages if p.id == "wiki10"][0]
    assert first.title == recs[0]["title"]
    blob = "\n".join(p.text for p in passages)
    for junk in ("[[", "]]", "{{", "}}", "<ref", "'''", "cite web", "Category", "caption that",
                 "cellA", "See also", "Something else", "Infobox"):
        assert junk not in blob, junk
    # the article text survives, whole, and is chunked like every other reader's
    assert first.text.split() == recs[0]["text"].split()[: len(first.text.split())]
    long = max(recs, key=lambda r: len(r["text"].split()))
    i = recs.index(long)
    got = [p.text for p in passages if p.id.split("#")[0] == f"wiki{10 + i}"]
    assert got == chunk_text(clean_wikitext(_wikitext(long, i)))
    # an index built from the dump answers
    assert not any(p.id in ("wiki5", "wiki6", "wiki7") for p in passages)


def test_shards_partition_the_pages(dump, tmp_path):
    path, _ = dump
    whole = [p.id for p in read_wikidump(path)]
    parts, skipped = [], {}
    for i in range(3):
        st = ReadStats()
        parts.append([p.id for p in read_wikidump(path, stats=st, shard=f"{i}/3")])
        for k, v in st.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    assert sorted(sum(parts, [])) == sorted(whole) and all(parts)
    assert not set(parts[0]) & set(parts[1])
    assert skipped == {"redirect": 1, "disambiguation": 1, "namespace": 1}


def test_index_from_the_dump(dump, tmp_path):
    path, recs = dump
    m = build_index(str(path), kind="bm25", out=str(tmp_path / "idx"), progress=False)
    assert m["count"] >= 120 and m["skipped"] == {"redirect": 1, "disambiguation": 1, "namespace": 1}
    r = make_retriever(f"bm25:{tmp_path / 'idx'}", k=3)
    hit = r.invoke(" ".join(recs[42]["text"].split()[:20]))[0]
    assert hit.metadata["id"] == "wiki52" and hit.metadata["title"] == recs[42]["title"]


def test_not_a_dump_is_one_clear_error(tmp_path):
    from masksearch.retrieval.corpus import CorpusError

    bad = tmp_path / "x.xml.bz2"
    bad.write_bytes(bz2.compress(b"<html><body>no</body></html>"))
    with pytest.raises(CorpusError, match="not a MediaWiki XML dump"):
        list(read_wikidump(bad))
