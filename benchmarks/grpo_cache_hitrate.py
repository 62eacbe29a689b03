"""Hit rate of the search cache over a GRPO run, from its rollouts.jsonl and the cache file.

    .venv/bin/python benchmarks/grpo_cache_hitrate.py OUTPUT_DIR CACHE.sqlite

Every query a rollout issued was one cache lookup (GRPO's k is fixed); on a cache that started
empty, the lookups that missed are the distinct normalised queries, which must also be the rows
of the cache file (printed as a cross-check).  Ends with one JSON line.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from masksearch.retrieval.cache import normalise_query


def main() -> None:
    out, cache = Path(sys.argv[1]), sys.argv[2]
    lookups, keys, rollouts = 0, set(), 0
    for line in open(out / "rollouts.jsonl", encoding="utf-8"):
        r = json.loads(line)
        rollouts += 1
        for step in r.get("trajectory", r).get("steps", []):
            for q in step.get("queries", []):
                lookups += 1
                keys.add(normalise_query(q))
    rows, cost = sqlite3.connect(cache).execute("SELECT COUNT(*), SUM(cost_s) FROM search").fetchone()
    print(json.dumps({"rollouts": rollouts, "lookups": lookups, "distinct_queries": len(keys),
                      "cache_rows": rows, "hit_rate": round(1 - len(keys) / lookups, 4) if lookups else None,
                      "miss_search_s": cost}))


if __name__ == "__main__":
    main()
