"""serve-retriever's memory and time at Search-R1's batch size, and under the largest answers it allows.

    python benchmarks/measure_server_memory.py INDEX_DIR [extra serve-retriever flags...]

Starts ``masksearch serve-retriever --retriever bm25:INDEX_DIR`` (no flags: the defaults), samples
the server's RSS every 20 ms, and sends (1) one Search-R1 batch of 2,560 HotpotQA questions at
topk 3, (2) 12 concurrent requests of 2,560 x topk 8 (``--max-hits``' limit), (3) one over the
limit (expects 413).  Compare ``--max-in-flight 4`` (default) with ``--max-in-flight 100``.
Ends with one JSON line.  Figures in docs/retrieval.md.
"""
import json, subprocess, sys, time, threading, socket
import httpx, psutil

idx = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
srv = subprocess.Popen([sys.executable, "-c", "import sys; from masksearch.cli import main; sys.exit(main())",
                        "serve-retriever", "--retriever", f"bm25:{idx}", "--port", str(port), *sys.argv[2:]],
                       stderr=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}"
for _ in range(600):
    try:
        httpx.get(f"{url}/health"); break
    except Exception:
        time.sleep(0.1)
proc = psutil.Process(srv.pid)
peak = [0]
stop = False
def watch():
    while not stop:
        try: peak[0] = max(peak[0], proc.memory_info().rss)
        except Exception: pass
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
from masksearch.paths import shared_bench

bench = shared_bench("hotpotqa")
qs = [json.loads(l)["question"] for l in open(bench)]
qs = (qs * (2560 // len(qs) + 1))[:2560]
rss0 = proc.memory_info().rss
out = {"rss_idle_mb": round(rss0 / 2**20, 1)}
t0 = time.perf_counter()
r = httpx.post(f"{url}/retrieve", json={"queries": qs, "topk": 3, "return_scores": True}, timeout=600)
out.update(searchr1_2560x3_s=round(time.perf_counter() - t0, 2), searchr1_status=r.status_code,
           searchr1_response_mb=round(len(r.content) / 2**20, 2), rss_after_one_mb=round(peak[0] / 2**20, 1))
body = {"queries": qs, "topk": 8, "return_scores": True}  # the largest answer max_hits allows
req_kb = len(json.dumps(body)) / 1024
results = []
def worst():
    rr = httpx.post(f"{url}/retrieve", json=body, timeout=600)
    results.append((rr.status_code, len(rr.content)))
t0 = time.perf_counter()
ths = [threading.Thread(target=worst) for _ in range(12)]
[t.start() for t in ths]; [t.join() for t in ths]
out.update(worst_12x_2560x8_s=round(time.perf_counter() - t0, 2), worst_request_kb=round(req_kb, 1),
           worst_response_mb=round(results[0][1] / 2**20, 2), worst_statuses=sorted({c for c, _ in results}),
           rss_peak_mb=round(peak[0] / 2**20, 1))
r = httpx.post(f"{url}/retrieve", json={"queries": qs, "topk": 100})
out["over_max_hits_status"] = r.status_code
stop = True
srv.terminate(); srv.wait(10)
print(json.dumps(out))
