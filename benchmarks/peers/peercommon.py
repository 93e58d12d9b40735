"""Shared by the Python peers: options, the kv table, timing, medians and JSON output.

The workloads are those of benchmarks/bench_main.cpp (see docs/benchmarks.md):
  W1: 1 connection, sequential `SELECT 1`.
  W2: 10 connections, 64 concurrent tasks (or 10 threads for a synchronous driver),
      `SELECT v FROM kv WHERE id = $1` with fixed-seed random ids over the 100,000-row `kv`.
  W3: 1 connection, `SELECT $1::int`, as many in flight as the driver allows, values checked.
Every workload: one unmeasured warm-up of a tenth of the count, then --repeat runs (default 3);
prints every run and the median (wall time and client CPU separately), like pgco_bench.
"""

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time

W2_ROWS = 100000
W2_CONNECTIONS = 10
W2_TASKS = 64
W3_WINDOW = 256

KV_SETUP = [
    "CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v text)",
    "INSERT INTO kv (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100000) g "
    "ON CONFLICT DO NOTHING",
    "ANALYZE kv",
]
KV_SHAPE = ("SELECT count(*) || ',' || min(id) || ',' || max(id) || ',' || "
            "count(*) FILTER (WHERE length(v) = 32) FROM kv")
KV_SHAPE_OK = "100000,1,100000,100000"


def parse_args(driver):
    p = argparse.ArgumentParser(description=f"{driver}: W1/W2/W3 of pgco_bench")
    p.add_argument("--url", default=os.environ.get("DATABASE_URL"))
    p.add_argument("--workload", default="W1,W2,W3")
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--w2-queries", type=int, default=100000)
    p.add_argument("--w3-queries", type=int, default=200000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    if not a.url:
        p.error("--url or DATABASE_URL is required")
    a.workloads = [w for w in a.workload.split(",") if w]
    for w in a.workloads:
        if w not in ("W1", "W2", "W3"):
            p.error(f"unknown workload {w}")
    if min(a.queries, a.w2_queries, a.w3_queries, a.repeat) <= 0:
        p.error("counts must be positive")
    return a


def w2_ids(n):
    """Fixed-seed uniform ids in 1..100000 (the same sequence for every Python peer)."""
    rng = random.Random(0x5EED2024)
    return [rng.randint(1, W2_ROWS) for _ in range(n)]


def w3_value(i):
    return i % 1000000000


def cpu_now():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stopwatch:
    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = cpu_now()

    def stop(self, queries):
        return {"seconds": time.perf_counter() - self.wall, "cpu": cpu_now() - self.cpu,
                "queries": queries}


def emit(workload, driver, m, stat, run, extra=None):
    line = {"workload": workload, "driver": driver, "stat": stat, "run": run,
            "queries": m["queries"], "seconds": round(m["seconds"], 4),
            "qps": round(m["queries"] / m["seconds"]),
            "cpu_us_per_query": round(m["cpu"] * 1e6 / m["queries"], 3)}
    if extra:
        line.update(extra)
    print(json.dumps(line, separators=(",", ":")), flush=True)


def run_workload(workload, driver, count, repeat, once, extra=None):
    """once(n) -> measurement of one run of n queries. Warm-up, `repeat` runs, median."""
    once(count // 10 + 1)
    runs = []
    for r in range(repeat):
        runs.append(once(count))
        emit(workload, driver, runs[-1], "run", r + 1, extra)
    med = {"seconds": statistics.median(m["seconds"] for m in runs),
           "cpu": statistics.median(m["cpu"] for m in runs), "queries": count}
    emit(workload, driver, med, "median", 0, extra)


def fail(msg):
    print(msg, file=sys.stderr, flush=True)
    sys.exit(1)
