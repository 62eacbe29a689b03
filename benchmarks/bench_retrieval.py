"""Retrieval benchmark: speed (ours vs the raw engines vs LangChain's rank_bm25), recall of the
supporting passages, and how cost grows with a 10x corpus.  Figures, not a timed test.

    .venv/bin/python benchmarks/bench_retrieval.py [--pool-questions N] [--dense-full] [--quick]

Measures (corpus: ../shared/data/corpus/wiki_passages.jsonl; queries: the HotpotQA, MuSiQue and
2WikiMultihopQA dev questions in ../shared/data/bench):

- queries/s at k=10 of our BM25 retriever (``search_many`` over the whole batch, and one query at
  a time), of the raw engine underneath (tantivy used directly the way its docs show: stored
  fields, ``parse_query_lenient``, ``searcher.doc`` per hit), of raw ``bm25s`` (batched
  ``retrieve``), and of LangChain's ``BM25Retriever`` (rank_bm25; a small sample: it is slow);
- index build time and size on disk;
- recall@1/5/10 of ``supporting_passage_ids`` (a chunk ``ID#n`` counts as ``ID``): BM25 over the
  full corpus, and BM25 / dense / hybrid (RRF) over the *pool*: the union of the context
  (distractor) passages of the evaluated questions.  ``--dense-full`` also encodes the whole
  corpus for dense and hybrid (slow on 2 CPU cores; cached under $MASKSEARCH_HOME/bench);
- the corpus replicated 10x (ids made unique), built and queried in a subprocess whose peak RSS
  is reported.

The last printed line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = ("hotpotqa", "musique", "2wikimultihopqa")
K = 10


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def load_questions():
    from masksearch.paths import shared_bench

    out = {}
    for name in DATASETS:
        path = shared_bench(name)
        recs = [json.loads(line) for line in open(path, encoding="utf-8")]
        out[name] = [r for r in recs if r.get("supporting_passage_ids")]
    return out


def recall(results, questions) -> dict[str, float]:
    from masksearch.retrieval import parent_id

    out = {}
    for k in (1, 5, 10):
        tot = 0.0
        for docs, q in zip(results, questions):
            got = {parent_id(d.metadata["id"]) for d in docs[:k]}
            supp = set(q["supporting_passage_ids"])
            tot += len(got & supp) / len(supp)
        out[f"recall@{k}"] = round(tot / max(1, len(questions)), 4)
    return out


def qps(fn, n: int, min_s: float = 1.0) -> float:
    """Calls/s of ``fn`` (which handles ``n`` queries per call), repeated for at least min_s."""
    fn()  # warm-up
    t0, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return n * calls / dt


# ---------------------------------------------------------------------------- 310k subprocess

def scale_child(corpus: str, tmp: str, factor: int, queries_path: str) -> None:
    """Runs in a fresh process: replicate, build, query; prints one JSON line with peak RSS."""
    from masksearch.retrieval import build_index, make_retriever

    big = Path(tmp) / f"corpus_x{factor}.jsonl"
    with open(big, "w", encoding="utf-8") as out:
        for rep in range(factor):
            with open(corpus, encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    r["id"] = f"{r['id']}-r{rep}"
                    out.write(json.dumps(r, ensure_ascii=False) + "\n")
    queries = json.load(open(queries_path))
    t0 = time.perf_counter()
    m = build_index(str(big), kind="bm25", out=str(Path(tmp) / "bm25_big"), progress=False)
    build_s = time.perf_counter() - t0
    big.unlink()
    r = make_retriever(f"bm25:{m['path']}", k=K)
    batched = qps(lambda: r.search_many(queries, K), len(queries))
    single = qps(lambda: [r.search_many([q], K) for q in queries[:200]], min(200, len(queries)))
    # the kernel's high-water mark of this process's own memory; not ru_maxrss, which after
    # fork+exec reports the parent's peak (the old "unexplained" 1.44-1.47 GB at 310k)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:")) / 1024 / 1024  # kB -> GiB
    print(json.dumps({"passages": m["count"], "build_s": build_s, "qps_batched": batched,
                      "qps_single": single, "rss_gb": rss, "size_mb": dir_size(Path(m["path"])) / 1e6}))


# ---------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-questions", type=int, default=40,
                    help="questions per dataset whose context passages form the dense/hybrid pool")
    ap.add_argument("--dense-full", action="store_true",
                    help="also dense/hybrid over the full corpus (encodes 32k passages; cached)")
    ap.add_argument("--langchain-queries", type=int, default=20)
    ap.add_argument("--factor", type=int, default=10, help="corpus replication for the scale run")
    ap.add_argument("--quick", action="store_true", help="skip the scale run and LangChain")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        corpus, tmp, factor, qpath = args._child
        scale_child(corpus, tmp, int(factor), qpath)
        return

    from masksearch.paths import home, shared_corpus
    from masksearch.retrieval import build_index, make_retriever, read_corpus
    from masksearch.retrieval.hybrid import HybridRetriever

    corpus = shared_corpus()
    if corpus is None:
        sys.exit("the shared corpus is missing (../shared/data/corpus/wiki_passages.jsonl)")
    qsets = load_questions()
    all_q = [q["question"] for name in DATASETS for q in qsets[name]]
    hot_q = [q["question"] for q in qsets["hotpotqa"]]
    res: dict = {"load_avg_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    tmp = tempfile.mkdtemp(prefix="bench-retrieval-")

    # ---- our BM25: build + speed
    log("building our BM25 index ...")
    t0 = time.perf_counter()
    m = build_index(str(corpus), kind="bm25", out=f"{tmp}/bm25", progress=False)
    res["bm25_build_s"] = round(time.perf_counter() - t0, 3)
    res["bm25_passages"] = m["count"]
    res["bm25_size_mb"] = round(dir_size(Path(m["path"])) / 1e6, 1)
    bm25 = make_retriever(f"bm25:{m['path']}", k=K)
    res["bm25_batched_qps"] = round(qps(lambda: bm25.search_many(all_q, K), len(all_q), 2.0), 1)
    res["bm25_single_qps"] = round(qps(lambda: [bm25.search_many([q], K) for q in hot_q], len(hot_q), 2.0), 1)
    log(f"ours: batched {res['bm25_batched_qps']} q/s, single {res['bm25_single_qps']} q/s")

    # ---- raw tantivy, used directly
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("title", stored=True, tokenizer_name="en_stem")
    sb.add_text_field("text", stored=True, tokenizer_name="en_stem")
    schema = sb.build()
    os.makedirs(f"{tmp}/raw_tantivy")
    t0 = time.perf_counter()
    idx = tantivy.Index(schema, path=f"{tmp}/raw_tantivy")
    w = idx.writer(128_000_000, 2)
    for p in read_corpus(corpus, chunk_words=0):
        w.add_document(tantivy.Document(id=p.id, title=p.title, text=p.text))
    w.commit()
    w.wait_merging_threads()
    res["raw_engine_build_s"] = round(time.perf_counter() - t0, 3)
    idx.reload()
    searcher = idx.searcher()

    def raw_search(q):
        query, _errs = idx.parse_query_lenient(q, ["title", "text"])
        hits = searcher.search(query, K).hits
        return [searcher.doc(a).to_dict() for _, a in hits]

    res["raw_engine_qps"] = round(qps(lambda: [raw_search(q) for q in hot_q], len(hot_q), 2.0), 1)
    res["ours_over_raw"] = round(res["bm25_single_qps"] / res["raw_engine_qps"], 3)
    log(f"raw tantivy: {res['raw_engine_qps']} q/s")

    # ---- raw bm25s
    import bm25s

    texts = [f"{p.title} {p.text}" for p in read_corpus(corpus, chunk_words=0)]
    t0 = time.perf_counter()
    retr = bm25s.BM25()
    retr.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    res["raw_bm25s_build_s"] = round(time.perf_counter() - t0, 3)

    def bm25s_batch():
        toks = bm25s.tokenize(all_q, stopwords="en", show_progress=False)
        return retr.retrieve(toks, k=K, show_progress=False, n_threads=os.cpu_count() or 1)

    res["raw_bm25s_qps"] = round(qps(bm25s_batch, len(all_q), 2.0), 1)
    log(f"raw bm25s: {res['raw_bm25s_qps']} q/s")

    # ---- LangChain BM25Retriever (rank_bm25)
    if not args.quick:
        from langchain_community.retrievers import BM25Retriever as LCBM25

        t0 = time.perf_counter()
        lc = LCBM25.from_texts(texts, k=K)
        res["langchain_bm25_build_s"] = round(time.perf_counter() - t0, 3)
        sample = hot_q[: args.langchain_queries]
        t0 = time.perf_counter()
        for q in sample:
            lc.invoke(q)
        res["langchain_bm25_qps"] = round(len(sample) / (time.perf_counter() - t0), 2)
        res["ours_over_langchain"] = round(res["bm25_single_qps"] / res["langchain_bm25_qps"], 1)
        log(f"langchain rank_bm25: {res['langchain_bm25_qps']} q/s")
        del lc
    del texts

    # ---- recall: BM25 over the full corpus
    recall_out: dict = {}
    for name in DATASETS:
        qs = qsets[name]
        recall_out.setdefault("bm25_full", {})[name] = recall(bm25.search_many([q["question"] for q in qs], K), qs)
    res["questions"] = {n: len(qsets[n]) for n in DATASETS}

    # ---- recall on the pool: BM25 / dense / hybrid over the same passages
    pool_q = {n: qsets[n][: args.pool_questions] for n in DATASETS}
    pool_ids = {pid for n in DATASETS for q in pool_q[n] for pid in q.get("context_passage_ids", [])}
    pool_ids |= {pid for n in DATASETS for q in pool_q[n] for pid in q["supporting_passage_ids"]}
    pool = [p for p in read_corpus(corpus, chunk_words=100) if p.id.split("#")[0] in pool_ids]
    res["pool_passages"] = len(pool)
    res["pool_questions"] = {n: len(pool_q[n]) for n in DATASETS}
    cache = home() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    pool_key = f"pool-{args.pool_questions}-{len(pool)}"
    build_index(pool, kind="bm25", out=f"{tmp}/bm25_pool", progress=False)
    bm25_pool = make_retriever(f"bm25:{tmp}/bm25_pool", k=K)
    dense_dir = cache / f"chroma-{pool_key}"
    t0 = time.perf_counter()
    if not (dense_dir / "manifest.json").exists():
        log(f"encoding the pool ({len(pool)} passages) for dense ...")
        build_index(pool, kind="chroma", out=str(dense_dir), progress=True)
        res["dense_pool_build_s"] = round(time.perf_counter() - t0, 1)
    dense_pool = make_retriever(f"chroma:{dense_dir}", k=K)
    hybrid_pool = HybridRetriever(retrievers=[bm25_pool, dense_pool], k=K)
    for name in DATASETS:
        qs = pool_q[name]
        texts_q = [q["question"] for q in qs]
        for label, r in (("bm25_pool", bm25_pool), ("dense_pool", dense_pool), ("hybrid_pool", hybrid_pool)):
            recall_out.setdefault(label, {})[name] = recall(r.search_many(texts_q, K), qs)
    t0 = time.perf_counter()
    dense_pool.search_many(all_q[:200], K)
    res["dense_qps"] = round(200 / (time.perf_counter() - t0), 1)

    if args.dense_full:
        full_dir = cache / "chroma-wiki_passages"
        if not (full_dir / "manifest.json").exists():
            log("encoding the full corpus for dense (slow on CPU; cached for reruns) ...")
            build_index(str(corpus), kind="chroma", out=str(full_dir), progress=True)
        dense = make_retriever(f"chroma:{full_dir}", k=K)
        hybrid = HybridRetriever(retrievers=[bm25, dense], k=K)
        for name in DATASETS:
            qs = qsets[name]
            tq = [q["question"] for q in qs]
            recall_out.setdefault("dense_full", {})[name] = recall(dense.search_many(tq, K), qs)
            recall_out.setdefault("hybrid_full", {})[name] = recall(hybrid.search_many(tq, K), qs)
    res["recall"] = recall_out
    res["recall@5"] = {label: {n: v["recall@5"] for n, v in per.items()} for label, per in recall_out.items()}
    for label, per in recall_out.items():
        log(f"{label:12s} " + "  ".join(f"{n}: R@1 {v['recall@1']:.3f} R@5 {v['recall@5']:.3f} "
                                         f"R@10 {v['recall@10']:.3f}" for n, v in per.items()))

    # ---- 10x corpus in a subprocess (peak RSS of build + queries)
    if not args.quick:
        qpath = f"{tmp}/queries.json"
        json.dump(all_q, open(qpath, "w"))
        log(f"scale run: corpus x{args.factor} in a subprocess ...")
        out = subprocess.run([sys.executable, __file__, "--_child", str(corpus), tmp, str(args.factor), qpath],
                             capture_output=True, text=True, check=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        res["passages_310k"] = child["passages"]
        res["build_s_310k"] = round(child["build_s"], 2)
        res["qps_310k"] = round(child["qps_batched"], 1)
        res["qps_310k_single"] = round(child["qps_single"], 1)
        res["rss_gb_310k"] = round(child["rss_gb"], 3)
        res["size_mb_310k"] = round(child["size_mb"], 1)

    res["load_avg_end"] = os.getloadavg()[0]
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
