#!/usr/bin/python3
"""W1/W2/W3 of pgco_bench with psycopg2 (Debian python3-psycopg2), a synchronous driver.

psycopg2 quotes parameters into the SQL text on the client and sends it with the simple
query protocol (PQexec): the server parses and plans every query; there are no prepared
statements and no pipelining. Connections are in autocommit mode.

W1: one connection, one cursor, `cur.execute("SELECT 1"); cur.fetchone()` in a loop.
W2: 10 threads, one connection each (as pgco_bench's libpq W2), sharing the ids through a
    counter; psycopg2 releases the GIL while it waits for the server.
W3: one connection, `cur.execute("SELECT %s::int", (v,))` one after the other: psycopg2 has
    no pipeline mode, so one query is in flight at a time.
"""

import itertools
import threading

import psycopg2

import peercommon as pc

DRIVER = "psycopg2"
W2_SQL = "SELECT v FROM kv WHERE id = %s"


def connect(url):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def w1(url, n):
    conn = connect(url)
    try:
        cur = conn.cursor()
        sw = pc.Stopwatch()
        for _ in range(n):
            cur.execute("SELECT 1")
            if cur.fetchone()[0] != 1:
                pc.fail("psycopg2 W1: wrong value")
        return sw.stop(n)
    finally:
        conn.close()


def kv_setup(url):
    conn = connect(url)
    try:
        cur = conn.cursor()
        for sql in pc.KV_SETUP:
            cur.execute(sql)
        cur.execute(pc.KV_SHAPE)
        shape = cur.fetchone()[0]
        if shape != pc.KV_SHAPE_OK:
            pc.fail(f"W2 setup: table kv is not ids 1..100000 (count,min,max,ok: {shape})")
    finally:
        conn.close()


def w2(url, ids):
    n = len(ids)
    conns = [connect(url) for _ in range(pc.W2_CONNECTIONS)]
    counter = itertools.count()  # next() on it is atomic under the GIL
    errors = []

    def worker(conn):
        try:
            cur = conn.cursor()
            for i in counter:
                if i >= n:
                    break
                cur.execute(W2_SQL, (ids[i],))
                row = cur.fetchone()
                if row is None or len(row[0]) != 32:
                    raise RuntimeError(f"psycopg2 W2: wrong value {row!r}")
        except Exception as e:  # stop and report
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
        sw = pc.Stopwatch()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m = sw.stop(n)
    finally:
        for c in conns:
            c.close()
    if errors:
        pc.fail(f"psycopg2 W2: {errors[0]}")
    return m


def w3(url, n):
    conn = connect(url)
    try:
        cur = conn.cursor()
        sw = pc.Stopwatch()
        for i in range(n):
            v = pc.w3_value(i)
            cur.execute("SELECT %s::int", (v,))
            got = cur.fetchone()[0]
            if got != v:
                pc.fail(f"psycopg2 W3: {got} for {v}")
        return sw.stop(n)
    finally:
        conn.close()


def main():
    a = pc.parse_args(DRIVER)
    if "W1" in a.workloads:
        pc.run_workload("W1", DRIVER, a.queries, a.repeat, lambda n: w1(a.url, n))
    if "W2" in a.workloads:
        kv_setup(a.url)
        pc.run_workload("W2", DRIVER, a.w2_queries, a.repeat,
                        lambda n: w2(a.url, pc.w2_ids(n)))
    if "W3" in a.workloads:
        pc.run_workload("W3", DRIVER, a.w3_queries, a.repeat, lambda n: w3(a.url, n),
                        {"in_flight": 1})


if __name__ == "__main__":
    main()
