"""``core-rerank serve`` under load: a real server subprocess, a real asyncio HTTP client, every answer checked.

    python benchmarks/bench_server.py                 # the full run (~15 min on 2 CPU cores)
    python benchmarks/bench_server.py --quick         # a smoke run (fewer, smaller requests; minutes)
    python benchmarks/bench_server.py --levels 1 4 16 64 --level-seconds 40 --max-queue 8 --threads 2

What it does, in one process (the client) against ``core-rerank serve`` subprocesses on 127.0.0.1 (free ports, the
embedded default model, ``--max-concurrent-requests 1``):

1. Requests. ``--pool`` distinct requests (fixed seed), each a query and ``--docs`` documents of ``--words`` words
   (~200 tokens at 140 words): SciFact queries and abstracts from ``../shared/data/scifact`` when that directory is
   there, else the handbook entries of ``examples/data/handbook.jsonl`` joined into documents of the same length
   (the JSON says which). Every request goes to ``POST /v2/rerank`` with ``raw_scores: true`` and
   ``max_tokens_per_doc: --doc-tokens`` (150): every document is cut to exactly that many tokens, so every request
   costs about the same pass and the single-request latency is one number, not a mix of request sizes.
2. The in-process baseline: the same ``Reranker(max_doc_tokens=--doc-tokens)`` in this process, with
   ``torch.set_num_threads(--threads)``; the servers get ``OMP_NUM_THREADS=--threads`` (torch's intra-op threads),
   so both sides run the same thread count.
   Its ``rank()`` of every pool request is the expected answer.
3. Overhead at concurrency 1, paired: ``--blocks`` times, an in-process block (``rank()`` of each pool request) then a
   server block (the same requests, one at a time). Reported: median latencies, their ratio, and the median of the
   per-request paired ratios (server / in-process in the same block), which machine noise affects least.
4. Load levels (``--levels``, default 1 4 16 64 concurrent clients), on a server with ``--max-batch-requests 1``
   (every request scored alone: the scheduler's own behaviour; batching is step 5). Each client sends pool requests
   (seeded choice) back to back until the level has sent ``--level-requests`` requests or ``--level-seconds``
   passed; requests in flight then finish (the level stops by itself). Clients start at seeded offsets within
   ``--ramp`` seconds, and a 429 makes a client wait ``--backoff`` x U(0.5, 1.5) seconds (jittered, as retrying
   clients do; ``--ramp 0`` starts all at once with a fixed wait, so refused clients retry in lockstep bursts).
   Reported per level: throughput of 200s, p50/p95/p99 latency of 200s, counts of 200 / 429 / 5xx / other / lost
   (no HTTP answer), 429 latency (p50, p99, max), and mismatches: every 200 is compared with the in-process
   ``rank()`` (same order, raw scores within 1e-4).
5. Batching (``--batch-queries k``): k concurrent requests, k different queries over one shared document list, to
   a server with ``--max-batch-requests k`` and to the one of step 4 (batching off), rounds interleaved (on, off,
   repeat). Reported: time per round, throughput, the gain (off / on, median of the paired rounds), and the same
   answer checks against in-process ``rank()`` of each query.

Targets, printed as met / not met and written to the JSON: at c=1 the server adds <= 10% to in-process ``rank()``
(median of paired ratios <= 1.10); under overload every 429 comes within 50 ms (max); accepted requests keep
p99 <= (max_queue + 1) x the single-request latency (the server's c=1 median); zero 5xx; zero lost or mismatched
answers. Results: ``--json`` (benchmarks/results/bench_server.json) and ``--plot`` (docs/serving_latency.png).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
HANDBOOK = ROOT / "examples" / "data" / "handbook.jsonl"
HANDBOOK_QUERIES = [
    "how do I copy a directory with everything inside it?",
    "how can I rename a file?",
    "how do I delete a directory recursively?",
    "how do I find files by name?",
    "how do I see how much disk space is left?",
    "how do I change file permissions?",
    "how do I search for text inside files?",
    "how do I compress a folder into an archive?",
]
SCORE_ATOL = 1e-4
SEED = 0
JSON_HEADERS = {"Content-Type": "application/json"}


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class Request:
    query: str
    documents: list[str]
    doc_tokens: int | None = None  # sent as max_tokens_per_doc: every document cut to this many tokens
    expected: list[tuple[int, float]] = field(default_factory=list)  # in-process rank(): (index, raw score) best first

    def body(self) -> dict:
        out = {"model": "default", "query": self.query, "documents": self.documents, "raw_scores": True}
        if self.doc_tokens is not None:
            out["max_tokens_per_doc"] = self.doc_tokens
        return out

    @functools.cached_property
    def encoded(self) -> bytes:
        """The body as sent, encoded once (the client spends no CPU re-encoding it per request)."""
        return json.dumps(self.body()).encode()


def text_source(words: int) -> tuple[str, list[str], list[str]]:
    """(name, documents of ``words`` words, queries) from real text available offline."""
    if (SCIFACT / "corpus.jsonl").is_file() and (SCIFACT / "queries.jsonl").is_file():
        docs, queries = [], []
        with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                text = " ".join(f"{row['title']}\n{row['text']}".split()[:words])
                if len(text.split()) >= words * 0.8:  # long abstracts only: ~equal lengths
                    docs.append(text)
                if len(docs) == 600:
                    break
        with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
            queries = [json.loads(line)["text"] for line in fh][:300]
        return "SciFact (../shared/data/scifact): abstracts and claims", docs, queries
    entries = [json.loads(line) for line in HANDBOOK.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [f"{e.get('title', '')}: {e['text']}" for e in entries]
    docs = []
    for start in range(len(texts)):  # each document: consecutive entries from a different start, cut to `words`
        joined = " ".join(texts[start:] + texts[:start]).split()
        docs.append(" ".join(joined[:words]))
    return "examples/data/handbook.jsonl: handbook entries joined", docs, HANDBOOK_QUERIES


def build_requests(n: int, n_docs: int, words: int, doc_tokens: int | None = None) -> tuple[str, list[Request]]:
    source, docs, queries = text_source(words)
    rng = random.Random(SEED)
    out, seen = [], set()
    while len(out) < n:
        picked = rng.sample(docs, min(n_docs, len(docs)))
        key = tuple(picked)
        if key in seen:
            continue
        seen.add(key)
        out.append(Request(queries[rng.randrange(len(queries))], picked, doc_tokens))
    return source, out


# ---------------------------------------------------------------------------------------------- the server
class Server:
    """``core-rerank serve`` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, *, threads: int, max_queue: int, max_batch: int, timeout: float, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = dict(threads=threads, max_queue=max_queue, max_batch_requests=max_batch, timeout=timeout)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "core_rerank.cli", "serve", "--port", str(self.port),
               "--max-concurrent-requests", "1", "--max-queue", str(max_queue), "--max-batch-requests", str(max_batch),
               "--timeout", str(timeout), "--log-level", "warning"]  # fmt: skip
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, limit: float = 600.0) -> None:
        import httpx

        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not get ready")

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


# ---------------------------------------------------------------------------------------------- checking answers
def check(answer: dict, expected: list[tuple[int, float]]) -> bool:
    """Same order as in-process rank(), raw scores within SCORE_ATOL."""
    got = [(r["index"], r["relevance_score"]) for r in answer["results"]]
    if [i for i, _ in got] != [i for i, _ in expected]:
        return False
    return all(s is not None and abs(s - e) <= SCORE_ATOL for (_, s), (_, e) in zip(got, expected))


def expected_of(results) -> list[tuple[int, float]]:
    return [(r.index, r.score) for r in results]


def quantiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def q(p: float) -> float:  # nearest rank
        return s[min(len(s) - 1, max(0, int(-(-p * len(s) // 1)) - 1))]

    return {"n": len(s), "p50": statistics.median(s), "p95": q(0.95), "p99": q(0.99), "max": s[-1], "min": s[0]}


@dataclass
class Tally:
    ok: list[float] = field(default_factory=list)  # latencies of 200s
    rejected: list[float] = field(default_factory=list)  # latencies of 429s
    server_errors: dict = field(default_factory=dict)  # status -> count (5xx)
    other: dict = field(default_factory=dict)  # status -> count (anything else)
    lost: int = 0
    mismatched: int = 0
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    client_lag: list[float] = field(default_factory=list)  # the client event loop's wake-up delays

    def record(self, status: int | None, seconds: float, body: dict | None, expected, error: str = "") -> None:
        if status is None:
            self.lost += 1
            if len(self.errors) < 5:
                self.errors.append(error)
        elif status == 200:
            self.ok.append(seconds)
            if body is None or not check(body, expected):
                self.mismatched += 1
        elif status == 429:
            self.rejected.append(seconds)
        elif status >= 500:
            self.server_errors[status] = self.server_errors.get(status, 0) + 1
        else:
            self.other[status] = self.other.get(status, 0) + 1
            if len(self.errors) < 5 and body is not None:
                self.errors.append(f"{status}: {body}")


async def send(client, url: str, req: Request, tally: Tally) -> int | None:
    import httpx

    tally.sent += 1
    start = time.perf_counter()
    try:
        r = await client.post(f"{url}/v2/rerank", content=req.encoded, headers=JSON_HEADERS)
        seconds = time.perf_counter() - start
        try:
            body = r.json()
        except ValueError:
            body = None
        tally.record(r.status_code, seconds, body, req.expected)
        return r.status_code
    except httpx.HTTPError as exc:
        tally.record(None, time.perf_counter() - start, None, req.expected, f"{type(exc).__name__}: {exc}")
        return None


async def send_one(url: str, req: Request, timeout: float) -> None:
    async with client(timeout) as c:
        await send(c, url, req, Tally())


def client(timeout: float):
    import httpx

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits)


# ---------------------------------------------------------------------------------------------- phases
def overhead(rr, server: Server, pool: list[Request], blocks: int, timeout: float) -> dict:
    """In-process block, server block, repeated; every server answer checked."""
    inproc: list[list[float]] = []
    served: list[list[float]] = []
    tally = Tally()

    async def server_block() -> list[float]:
        out = []
        async with client(timeout) as c:
            for req in pool:
                before = len(tally.ok)
                await send(c, server.url, req, tally)
                out.append(tally.ok[-1] if len(tally.ok) > before else float("nan"))
        return out

    for b in range(blocks):
        times = []
        for req in pool:
            start = time.perf_counter()
            results = rr.rank(req.query, req.documents, show_progress_bar=False)
            times.append(time.perf_counter() - start)
            if b == 0:
                req.expected = expected_of(results)
            elif expected_of(results) != req.expected:
                print("warning: in-process rank() differs between repeats", file=sys.stderr)
        inproc.append(times)
        served.append(asyncio.run(server_block()))
        print(f"  block {b + 1}/{blocks}: in-process {statistics.median(times):.2f} s, "
              f"server {statistics.median(served[-1]):.2f} s (medians)", flush=True)  # fmt: skip
    pairs = [s / i for bi, bs in zip(inproc, served) for i, s in zip(bi, bs) if s == s]
    flat_in = [t for b in inproc for t in b]
    flat_srv = [t for b in served for t in b if t == t]
    return {
        "blocks": blocks,
        "requests_per_block": len(pool),
        "in_process_s": inproc,
        "server_s": served,
        "in_process_median_s": statistics.median(flat_in),
        "server_median_s": statistics.median(flat_srv) if flat_srv else None,
        "ratio_of_medians": statistics.median(flat_srv) / statistics.median(flat_in) if flat_srv else None,
        "median_paired_ratio": statistics.median(pairs) if pairs else None,
        "paired_ratios": pairs,
        "checks": tally_summary(tally, 1.0),
    }


async def level(url: str, pool: list[Request], c: int, max_requests: int, seconds: float, backoff: float,
                timeout: float, ramp: float = 0.0) -> tuple[Tally, float]:  # fmt: skip
    """``c`` closed-loop clients; each starts at a seeded offset within ``ramp`` seconds and waits ``backoff`` x
    U(0.5, 1.5) after a 429 (jittered, as retrying clients do: with a fixed wait the refused clients retry in
    lockstep, a burst of up to ``c`` requests at once every ``backoff`` seconds). ``ramp=0``: all start at once."""
    tally = Tally()

    async def worker(w: int, cl, deadline: float) -> None:
        rng = random.Random(SEED * 1000 + c * 100 + w)
        await asyncio.sleep(rng.uniform(0.0, ramp))
        while time.perf_counter() < deadline and tally.sent < max_requests:
            status = await send(cl, url, pool[rng.randrange(len(pool))], tally)
            if status == 429:
                await asyncio.sleep(backoff * (rng.uniform(0.5, 1.5) if ramp > 0 else 1.0))

    # One connection pool for every simulated client, made before the clock starts: an httpx client builds an SSL
    # context when created (~20 ms of CPU each), and 64 of them made inside the level blocked this event loop for
    # over a second while the first requests were in flight, inflating every latency it measured.
    async with client(timeout) as cl:
        lag: list[float] = []
        ticker = asyncio.ensure_future(loop_lag(lag))
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, cl, start + seconds) for w in range(c)))
        wall = time.perf_counter() - start
        ticker.cancel()
    tally.client_lag = lag
    return tally, wall


async def loop_lag(out: list[float], every: float = 0.05) -> None:
    """How late this (client) event loop wakes up: its lag inflates every latency the client measures."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(every)
        out.append(time.perf_counter() - start - every)


def tally_summary(t: Tally, wall: float) -> dict:
    return {
        "sent": t.sent,
        "wall_s": wall,
        "throughput_rps": len(t.ok) / wall if wall > 0 else None,
        "latency_200_s": quantiles(t.ok),
        "latency_429_s": quantiles(t.rejected),
        "count_200": len(t.ok),
        "count_429": len(t.rejected),
        "count_5xx": sum(t.server_errors.values()),
        "statuses_5xx": {str(k): v for k, v in t.server_errors.items()},
        "count_other": sum(t.other.values()),
        "statuses_other": {str(k): v for k, v in t.other.items()},
        "lost": t.lost,
        "mismatched": t.mismatched,
        "client_loop_lag_s": quantiles(t.client_lag),
        "errors": t.errors,
    }


def batching(rr, on: Server, off: Server, shared: Request, queries: list[str], rounds: int, timeout: float) -> dict:
    """k concurrent queries over one shared list, rounds interleaved: batching on, then off."""
    reqs = [Request(q, shared.documents, shared.doc_tokens) for q in queries]
    for req in reqs:
        req.expected = expected_of(rr.rank(req.query, req.documents, show_progress_bar=False))
    tallies = {"on": Tally(), "off": Tally()}
    times: dict[str, list[float]] = {"on": [], "off": []}

    async def one_round(server: Server, tally: Tally) -> float:
        async with client(timeout) as c:
            start = time.perf_counter()
            await asyncio.gather(*(send(c, server.url, req, tally) for req in reqs))
            return time.perf_counter() - start

    for r in range(rounds):
        for name, server in (("on", on), ("off", off)):
            times[name].append(asyncio.run(one_round(server, tallies[name])))
        print(f"  round {r + 1}/{rounds}: batching on {times['on'][-1]:.2f} s, off {times['off'][-1]:.2f} s",
              flush=True)  # fmt: skip
    gains = [f / o for o, f in zip(times["on"], times["off"])]
    k = len(queries)
    return {
        "queries": k,
        "documents": len(shared.documents),
        "rounds": rounds,
        "max_batch_requests_on": on.args["max_batch_requests"],
        "round_s": times,
        "throughput_rps": {name: k / statistics.median(ts) for name, ts in times.items()},
        "gain_median_paired": statistics.median(gains),
        "gains": gains,
        "batch_size_histogram_on": batch_histogram(on.metrics()),
        "checks": {name: tally_summary(t, sum(times[name])) for name, t in tallies.items()},
    }


def duration_buckets(text: str) -> dict[str, float]:
    """The server's own ``request_duration_seconds`` histogram of /v2/rerank: cumulative counts by bucket bound."""
    out = {}
    prefix = 'core_rerank_request_duration_seconds_bucket{endpoint="/v2/rerank",le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            bound, value = line[len(prefix) :].split('"} ')
            out[bound] = float(value)
    return out


def server_side_fast(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Answers of one level the server itself gave within each bound up to 5 s: there only 429s (a 200 takes
    seconds here), so this is the 429 latency without the client's own delays."""
    return {b: after.get(b, 0) - before.get(b, 0) for b in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                                                           "1.0", "2.5", "5.0")}  # fmt: skip


def batch_histogram(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line.startswith("core_rerank_batch_size_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("core_rerank_batch_size_")] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- report
def targets(result: dict) -> dict:
    ov = result["overhead"]
    levels = result["levels"]
    single = ov["server_median_s"]
    q = result["config"]["max_queue"]
    out = {}
    ratio = ov["median_paired_ratio"]
    out["overhead_c1_le_10pct"] = {
        "target": "server latency at c=1 <= 1.10 x in-process rank() (median of paired ratios)",
        "value": ratio,
        "met": ratio is not None and ratio <= 1.10,
    }
    rej = [x for lv in levels for x in lv["_rejected"]]
    out["429_within_50ms"] = {
        "target": "every 429 answered within 50 ms (max over all levels)",
        "value": max(rej) if rej else None,
        "p99": quantiles(rej).get("p99"),
        "count": len(rej),
        "met": bool(rej) and max(rej) <= 0.050,
        "server_side_within_50ms": sum(lv.get("server_side_answers_within_s", {}).get("0.05", 0) for lv in levels),
        "note": "value: the client's view (max); server_side_within_50ms: answers the server itself gave within "
        "50 ms by its request_duration histogram (only 429s are that fast), to compare with count",
    }
    bound = (q + 1) * single if single else None
    p99s = {str(lv["concurrency"]): lv["latency_200_s"].get("p99") for lv in levels}
    out["accepted_p99_bound"] = {
        "target": f"p99 of accepted (200) requests <= (max_queue + 1) x single-request latency = {q + 1} x "
        f"{single:.2f} s = {bound:.1f} s, every level",
        "value": p99s,
        "met": bound is not None and all(v is not None and v <= bound for v in p99s.values()),
    }
    checks = [ov["checks"], *levels, *result.get("batching", {}).get("checks", {}).values()]
    five = sum(c["count_5xx"] for c in checks)
    out["zero_5xx"] = {"target": "no 5xx answer anywhere", "value": five, "met": five == 0}
    lost = sum(c["lost"] for c in checks)
    bad = sum(c["mismatched"] for c in checks)
    out["zero_lost_or_mismatched"] = {
        "target": "every request answered; every 200 equal to in-process rank() (order, raw scores within 1e-4)",
        "value": {"lost": lost, "mismatched": bad, "checked_200s": sum(c["count_200"] for c in checks)},
        "met": lost == 0 and bad == 0,
    }
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    cs = [lv["concurrency"] for lv in levels]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))

    def panel(axis, latency: str, scale: float, keys: tuple[str, ...], status: str, ylabel: str, title: str) -> None:
        """One latency-against-concurrency panel: a line per quantile of ``latency`` (seconds x ``scale``)."""
        for key, style in zip(keys, ("o-", "s--", "^:")):
            axis.plot(cs, [scale * (lv[latency].get(key) or float("nan")) for lv in levels], style,
                      label=f"{key} ({status})")  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xticks(cs, [str(c) for c in cs])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(ylabel)
        axis.set_title(title)

    panel(ax, "latency_200_s", 1.0, ("p50", "p95", "p99"), "200", "latency of accepted requests (s)",
          "accepted requests (200)")  # fmt: skip
    single = result["overhead"]["server_median_s"]
    bound = (result["config"]["max_queue"] + 1) * single
    ax.axhline(bound, color="grey", lw=1, label=f"(max_queue + 1) x single = {bound:.1f} s")
    ax.axhline(result["overhead"]["in_process_median_s"], color="black", lw=0.8, ls="-.", label="in-process rank()")
    panel(bx, "latency_429_s", 1000.0, ("p50", "p99", "max"), "429", "latency of 429 answers (ms)",
          "refused requests (429 Overloaded)")  # fmt: skip
    bx.axhline(50, color="grey", lw=1, label="target: 50 ms")
    for axis in (ax, bx):
        axis.legend(fontsize=8)
    m, cfg = result["machine"], result["config"]
    size = f"{cfg['doc_tokens']} tokens" if cfg.get("doc_tokens") else f"{cfg['words']} words"
    fig.suptitle(f"core-rerank serve, default model, {cfg['docs']} docs x {size}, "
                 f"max_queue {result['config']['max_queue']}, 1 worker; {m['cpus']} CPU cores (load average "
                 f"{result['load_average']['after_levels'][0]:.1f} after the levels), "
                 f"torch threads: {m['torch_threads']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def machine(threads: int) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "torch_threads": threads,
            "python": platform.python_version()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 small requests, levels 1 4, short bounds")
    p.add_argument("--levels", type=int, nargs="+", default=None, help="concurrency levels (default 1 4 16 64)")
    p.add_argument("--level-requests", type=int, default=None, help="most requests one level sends (default 2000)")
    p.add_argument("--level-seconds", type=float, default=None, help="seconds a level sends for (default 40)")
    p.add_argument("--pool", type=int, default=None, help="distinct requests (default 4)")
    p.add_argument("--docs", type=int, default=None, help="documents per request (default 20)")
    p.add_argument("--words", type=int, default=None, help="words per document (default 140, ~200 tokens)")
    p.add_argument("--doc-tokens", type=int, default=None, help="max_tokens_per_doc of each request (default 150)")
    p.add_argument("--blocks", type=int, default=None, help="paired blocks at c=1 (default 3)")
    p.add_argument("--max-queue", type=int, default=None, help="the server's --max-queue (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="the server's --timeout (and the client's)")
    p.add_argument("--backoff", type=float, default=1.0, help="mean seconds a client waits after a 429 (jittered)")
    p.add_argument("--ramp", type=float, default=1.0, help="clients start within this many seconds (0: at once, "
                   "and a fixed backoff: refused clients retry in lockstep)")  # fmt: skip
    p.add_argument("--batch-queries", type=int, default=None, help="k queries over one list (default 8; 0: skip)")
    p.add_argument("--batch-rounds", type=int, default=None, help="paired rounds of the batching case (default 2)")
    p.add_argument("--json", type=Path, default=None, help="results (--quick: a tmp dir)")
    p.add_argument("--plot", type=Path, default=None, help="the plot (--quick: a tmp dir)")
    p.add_argument("--replot", type=Path, default=None, help="only redraw --plot from this results JSON")
    a = p.parse_args()
    if a.replot is not None:
        plot(json.loads(a.replot.read_text()), a.plot or ROOT / "docs" / "serving_latency.png")
        return
    quick = a.quick
    cfg = {
        "quick": quick,
        "levels": a.levels or ([1, 4] if quick else [1, 4, 16, 64]),
        "level_requests": a.level_requests or (8 if quick else 2000),
        "level_seconds": a.level_seconds or (10.0 if quick else 40.0),
        "pool": a.pool or (2 if quick else 4),
        "docs": a.docs or (5 if quick else 20),
        "words": a.words or (40 if quick else 140),
        "doc_tokens": (a.doc_tokens if a.doc_tokens is not None else (40 if quick else 150)) or None,
        "blocks": a.blocks or (1 if quick else 3),
        "max_queue": a.max_queue if a.max_queue is not None else (2 if quick else 8),
        "threads": a.threads,
        "timeout": a.timeout,
        "backoff": a.backoff,
        "ramp": a.ramp,
        "batch_queries": a.batch_queries if a.batch_queries is not None else (3 if quick else 8),
        "batch_rounds": a.batch_rounds or (1 if quick else 2),
        "endpoint": "/v2/rerank (raw_scores: true, max_tokens_per_doc: doc_tokens)",
        "max_concurrent_requests": 1,
        "seed": SEED,
    }
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    from core_rerank import Reranker

    source, pool = build_requests(cfg["pool"], cfg["docs"], cfg["words"], cfg["doc_tokens"])
    cfg["text_source"] = source
    k = cfg["batch_queries"]
    logs = Path(tempfile.mkdtemp(prefix="bench-server-"))
    out_dir = logs if quick else None  # a smoke run never overwrites the recorded results
    a.json = a.json or (out_dir or ROOT / "benchmarks" / "results") / "bench_server.json"
    a.plot = a.plot or (out_dir or ROOT / "docs") / "serving_latency.png"
    load = {"before": os.getloadavg()}
    print(f"load average before: {load['before']}; starting servers (logs in {logs})", flush=True)
    off = Server(threads=a.threads, max_queue=cfg["max_queue"], max_batch=1, timeout=a.timeout, log=logs / "off.log")
    on = None
    if k > 1:
        on = Server(threads=a.threads, max_queue=max(cfg["max_queue"], k), max_batch=k, timeout=a.timeout,
                    log=logs / "on.log")  # fmt: skip
    try:
        rr = Reranker(**({"max_doc_tokens": cfg["doc_tokens"]} if cfg["doc_tokens"] else {}))
        tokens = [sum(r.tokens for r in rr.rank(req.query, req.documents, show_progress_bar=False)) for req in pool]
        off.wait_ready()
        if on is not None:
            on.wait_ready()
        for server in (off, on) if on is not None else (off,):  # warm-up: each server's first pass, not measured
            asyncio.run(send_one(server.url, pool[0], a.timeout))
        print(f"{rr!r}; {len(pool)} requests of {cfg['docs']} documents (document tokens: {tokens})")
        # This client holds a model too: without this, each full collection of its ~400,000 objects stalls its
        # event loop (~0.2 s, more under load) and inflates the latencies it measures, 429s above all.
        gc.collect()
        gc.freeze()
        result: dict = {"config": cfg, "machine": machine(a.threads), "document_tokens": tokens}
        print("overhead at c=1 (paired blocks)", flush=True)
        result["overhead"] = overhead(rr, off, pool, cfg["blocks"], a.timeout)
        load["after_overhead"] = os.getloadavg()
        result["levels"] = []
        for c in cfg["levels"]:
            before = duration_buckets(off.metrics())
            tally, wall = asyncio.run(level(off.url, pool, c, cfg["level_requests"], cfg["level_seconds"], a.backoff,
                                            a.timeout, a.ramp))  # fmt: skip
            summary = {"concurrency": c, **tally_summary(tally, wall), "load_average": os.getloadavg()}
            summary["server_side_answers_within_s"] = server_side_fast(before, duration_buckets(off.metrics()))
            summary["_rejected"] = tally.rejected
            result["levels"].append(summary)
            lat = summary["latency_200_s"]
            r429 = summary["latency_429_s"]
            print(f"  c={c}: {summary['count_200']} x 200 ({summary['throughput_rps']:.3f}/s, "
                  f"p50 {lat.get('p50', 0):.2f} p95 {lat.get('p95', 0):.2f} p99 {lat.get('p99', 0):.2f} s), "
                  f"{summary['count_429']} x 429 "
                  f"(p50 {1000 * r429.get('p50', 0):.1f} max {1000 * r429.get('max', 0):.1f} ms), "
                  f"5xx {summary['count_5xx']}, other {summary['count_other']}, lost {summary['lost']}, "
                  f"mismatched {summary['mismatched']}; client loop lag max "
                  f"{1000 * summary['client_loop_lag_s'].get('max', 0):.0f} ms; server-side answers within 50 ms "
                  f"{summary['server_side_answers_within_s']['0.05']:.0f}", flush=True)  # fmt: skip
        load["after_levels"] = os.getloadavg()
        if on is not None:
            print(f"batching: {k} concurrent queries over one list, on vs off", flush=True)
            rng = random.Random(SEED + 1)
            _, _, queries = text_source(cfg["words"])
            result["batching"] = batching(rr, on, off, pool[0], rng.sample(queries, k), cfg["batch_rounds"],
                                          a.timeout)  # fmt: skip
            b = result["batching"]
            print(f"  gain {b['gain_median_paired']:.2f}x (throughput {b['throughput_rps']['on']:.3f}/s on, "
                  f"{b['throughput_rps']['off']:.3f}/s off); batch sizes {b['batch_size_histogram_on']}")  # fmt: skip
        load["after"] = os.getloadavg()
        result["load_average"] = load
        result["targets"] = targets(result)
        for lv in result["levels"]:
            lv.pop("_rejected")
    finally:
        off.stop()
        if on is not None:
            on.stop()
    print("targets:")
    for t in result["targets"].values():
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: {t['value']}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, a.plot)
    print(f"wrote {a.json} and {a.plot}")


if __name__ == "__main__":
    main()
