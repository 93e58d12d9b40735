#!/usr/bin/python3
"""W1/W2/W3 of pgco_bench with pgbench (PostgreSQL 15's, from the postgresql-15 package), the
benchmark issue 5 names beside raw libpq. pgbench is C on libpq; each run is one pgbench
process with a custom script and `-M prepared` (named prepared statements):

W1: 1 client, `SELECT 1`, 20,000 transactions of one statement.
W2: 10 clients on one thread (-c 10 -j 1, pgbench drives them asynchronously),
    `\\set id random(1, 100000)` then `SELECT v FROM kv WHERE id = :id`: uniform random ids
    over the same table, but pgbench's own sequence, not pgco_bench's.
W3: 1 client, pipeline mode: `\\startpipeline`, 100 x `SELECT :v::int`, `\\endpipeline` (one
    Sync per 100 statements, as libpq_prepared; at most 100 in flight, where libpq_prepared
    keeps up to 256). Results are not checked.

Time: pgbench's own tps "without initial connection time", times the statements per
transaction. Client CPU: the pgbench process's (getrusage of the child), less that of a run of
one transaction (start-up and connect), divided by the statements.
"""

import os
import re
import resource
import shutil
import subprocess
import tempfile

import peercommon as pc

DRIVER = "pgbench"
W3_PER_SYNC = 100


def pgbench_path():
    found = shutil.which("pgbench")
    if found:
        return found
    for v in ("15", "16", "17"):
        p = f"/usr/lib/postgresql/{v}/bin/pgbench"
        if os.access(p, os.X_OK):
            return p
    pc.fail("pgbench: not found (Debian package postgresql-15)")


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_pgbench(url, script, clients, transactions, protocol="prepared"):
    """Runs pgbench; returns (tps without connection time, CPU seconds it used)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cpu = children_cpu()
        done = subprocess.run(
            [pgbench_path(), "-n", "-M", protocol, "-c", str(clients), "-j", "1", "-t",
             str(transactions), "-f", path, url],
            capture_output=True, text=True, timeout=600)
        used = children_cpu() - cpu
    finally:
        os.unlink(path)
    if done.returncode != 0:
        pc.fail(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if not m:
        pc.fail("pgbench: no tps in its output:\n" + done.stdout[-500:])
    return float(m.group(1)), used


def measure(url, script, clients, statements_per_tx, n):
    """A measurement of n statements, in pc.emit's form."""
    transactions = max(1, n // (clients * statements_per_tx))
    queries = transactions * clients * statements_per_tx
    tps, cpu = run_pgbench(url, script, clients, transactions)
    _, fixed = run_pgbench(url, script, clients, 1)
    return {"seconds": transactions * clients / tps, "cpu": max(cpu - fixed, 0.0),
            "queries": queries}


W1_SCRIPT = "SELECT 1;\n"
W2_SCRIPT = "\\set id random(1, 100000)\nSELECT v FROM kv WHERE id = :id;\n"
W3_SCRIPT = ("\\set v random(1, 1000000000)\n\\startpipeline\n" +
             "SELECT :v::int;\n" * W3_PER_SYNC + "\\endpipeline\n")


def main():
    a = pc.parse_args(DRIVER)
    if "W2" in a.workloads:
        run_pgbench(a.url, ";\n".join(pc.KV_SETUP) + ";\n", 1, 1, protocol="simple")
    for w in a.workloads:
        if w == "W1":
            pc.run_workload("W1", DRIVER, a.queries, a.repeat,
                            lambda n: measure(a.url, W1_SCRIPT, 1, 1, n))
        elif w == "W2":
            pc.run_workload("W2", DRIVER, a.w2_queries, a.repeat,
                            lambda n: measure(a.url, W2_SCRIPT, pc.W2_CONNECTIONS, 1, n))
        else:
            pc.run_workload("W3", DRIVER, a.w3_queries, a.repeat,
                            lambda n: measure(a.url, W3_SCRIPT, 1, W3_PER_SYNC, n))


if __name__ == "__main__":
    main()
