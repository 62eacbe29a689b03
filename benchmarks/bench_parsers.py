"""Adversarial-input benchmark: our linear tag parser and chunker vs the obvious alternatives.

    .venv/bin/python benchmarks/bench_parsers.py [--quick]

- Tag parsing: :func:`masksearch.protocol.last_tag` (``str.find`` over a same-offset lower-cased
  copy) vs the obvious regex, ``re.findall(r"<think>(.*?)</think>", re.S | re.I)`` then
  ``re.search(r"<think>(.*)$")`` (what the parsers did before), on floods of ``<think>`` with no
  closing tag.  The regex backtracks from every opening tag to the end: quadratic.
- Chunking: :func:`masksearch.retrieval.corpus.chunk_text` (an offset into an over-long sentence)
  vs cutting by re-slicing the remaining word list (``sent = sent[room:]``), on one line of words
  with no sentence end.

Prints a table with the ratio and ends with one JSON line.  Figures are wall-clock seconds on the
machine it runs on (say whether it was busy).
"""

from __future__ import annotations

import argparse
import json
import re
import time

from masksearch.protocol import last_tag, parse_action
from masksearch.retrieval.corpus import _SENT_END, chunk_text


def regex_tag(text: str, tag: str) -> str | None:
    closed = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S | re.I)
    if closed:
        return closed[-1].strip()
    m = re.search(rf"<{tag}>(.*)$", text, re.S | re.I)
    return m.group(1).strip() if m else None


def slicing_chunks(text: str, chunk_words: int = 100) -> list[str]:
    words = text.split()
    n_chunks = max(1, round(len(words) / chunk_words))
    target = len(words) / n_chunks
    chunks: list[list[str]] = [[]]
    for sent in (s.split() for s in _SENT_END.split(" ".join(words)) if s.strip()):
        while len(sent) > 1.5 * target:
            room = max(1, int(target) - len(chunks[-1]))
            chunks[-1].extend(sent[:room])
            sent = sent[room:]
            chunks.append([])
        chunks[-1].extend(sent)
    return [" ".join(c) for c in chunks if c]


def timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs for the quadratic baselines")
    args = ap.parse_args()
    out: dict[str, float] = {}
    sizes = (12_500, 25_000, 50_000) if args.quick else (25_000, 50_000, 100_000)
    print(f"{'tag flood':>12} {'regex s':>9} {'ours s':>9} {'ratio':>8}")
    for n in sizes:
        text = "<think>" * (n // 7)
        t_re, t_ours = timed(regex_tag, text, "think"), timed(last_tag, text, "think")
        print(f"{n:>10} B {t_re:9.3f} {t_ours:9.5f} {t_re / max(t_ours, 1e-9):8.0f}x")
        out[f"tag_regex_s_{n}"], out[f"tag_ours_s_{n}"] = round(t_re, 4), round(t_ours, 6)
    big = "<think>" * (1_000_000 // 7)
    out["tag_ours_s_1000000"] = round(timed(last_tag, big, "think"), 6)
    out["parse_action_s_1000000"] = round(timed(parse_action, big), 6)
    print(f"{1_000_000:>10} B {'-':>9} {out['tag_ours_s_1000000']:9.5f}   (parse_action: "
          f"{out['parse_action_s_1000000']:.6f} s, too_long)")
    words = 50_000 if args.quick else 200_000
    line = "word " * words  # no sentence end
    t_sl, t_ours = timed(slicing_chunks, line), timed(chunk_text, line)
    assert slicing_chunks(line) == chunk_text(line)
    print(f"chunk one {len(line) / 1e6:.1f} MB line: re-slicing {t_sl:.2f} s, ours {t_ours:.3f} s "
          f"({t_sl / max(t_ours, 1e-9):.0f}x)")
    t4 = timed(chunk_text, "word " * 800_000)
    print(f"chunk one 4.0 MB line: ours {t4:.2f} s")
    out.update(chunk_slicing_s=round(t_sl, 3), chunk_ours_s=round(t_ours, 4), chunk_mb=round(len(line) / 1e6, 2),
               chunk_ours_4mb_s=round(t4, 3), tag_ratio=round(out[f"tag_regex_s_{sizes[-1]}"] /
                                                              max(out[f"tag_ours_s_{sizes[-1]}"], 1e-9)),
               chunk_ratio=round(t_sl / max(t_ours, 1e-9), 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
