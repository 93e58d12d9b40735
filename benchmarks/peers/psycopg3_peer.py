#!/usr/bin/python3
"""W1/W2/W3 of pgco_bench with psycopg 3 (Debian python3-psycopg, python3-psycopg-pool).

Debian 12 ships psycopg 3.1 with the pure-Python libpq binding only (psycopg.pq.__impl__ ==
"python"; the C speed-ups, psycopg-c / psycopg-binary, come from PyPI). Connections are in
autocommit mode; psycopg prepares a statement server-side from its 6th execution
(prepare_threshold=5), so the timed loops run prepared statements.

W1: sync connection, one cursor, `cur.execute("SELECT 1"); cur.fetchone()` in a loop.
W2: psycopg_pool.AsyncConnectionPool(min_size=10, max_size=10), 64 asyncio tasks each
    `async with pool.connection() as c: (await c.execute(sql, (id,))).fetchone()`.
W3: sync connection in pipeline mode (`with conn.pipeline()`): queries are queued with
    cursor.execute and their results fetched up to 256 behind, in order, so that up to 256
    are unanswered; psycopg sends a flush request whenever a fetch needs a result not yet read.
"""

import asyncio
import collections

import psycopg
import psycopg_pool

import peercommon as pc

DRIVER = "psycopg3"
W2_SQL = "SELECT v FROM kv WHERE id = %s"


def w1(url, n):
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        for _ in range(10):  # past prepare_threshold before the clock
            cur.execute("SELECT 1")
            cur.fetchone()
        sw = pc.Stopwatch()
        for _ in range(n):
            cur.execute("SELECT 1")
            if cur.fetchone()[0] != 1:
                pc.fail("psycopg3 W1: wrong value")
        return sw.stop(n)


def kv_setup(url):
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in pc.KV_SETUP:
            conn.execute(sql)
        shape = conn.execute(pc.KV_SHAPE).fetchone()[0]
        if shape != pc.KV_SHAPE_OK:
            pc.fail(f"W2 setup: table kv is not ids 1..100000 (count,min,max,ok: {shape})")


async def w2_async(url, ids):
    pool = psycopg_pool.AsyncConnectionPool(url, min_size=pc.W2_CONNECTIONS,
                                            max_size=pc.W2_CONNECTIONS,
                                            kwargs={"autocommit": True}, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        n = len(ids)
        state = {"next": 0}

        async def worker():
            while state["next"] < n:
                i = state["next"]
                state["next"] = i + 1
                async with pool.connection() as conn:
                    cur = await conn.execute(W2_SQL, (ids[i],))
                    row = await cur.fetchone()
                if row is None or len(row[0]) != 32:
                    raise RuntimeError(f"psycopg3 W2: wrong value {row!r}")

        sw = pc.Stopwatch()
        await asyncio.gather(*(worker() for _ in range(pc.W2_TASKS)))
        return sw.stop(n)
    finally:
        await pool.close()


def w3(url, n):
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(10):  # past prepare_threshold before the clock
            conn.execute("SELECT %s::int", (0,)).fetchone()
        sw = pc.Stopwatch()
        pending = collections.deque()

        def take():
            cur, v = pending.popleft()
            got = cur.fetchone()[0]
            if got != v:
                pc.fail(f"psycopg3 W3: {got} for {v}")

        with conn.pipeline():
            for i in range(n):
                v = pc.w3_value(i)
                cur = conn.cursor()
                cur.execute("SELECT %s::int", (v,))
                pending.append((cur, v))
                if len(pending) >= pc.W3_WINDOW:
                    take()
            while pending:
                take()
        return sw.stop(n)


def main():
    a = pc.parse_args(DRIVER)
    impl = {"impl": psycopg.pq.__impl__}
    if "W1" in a.workloads:
        pc.run_workload("W1", DRIVER, a.queries, a.repeat, lambda n: w1(a.url, n), impl)
    if "W2" in a.workloads:
        kv_setup(a.url)
        pc.run_workload("W2", DRIVER, a.w2_queries, a.repeat,
                        lambda n: asyncio.run(w2_async(a.url, pc.w2_ids(n))), impl)
    if "W3" in a.workloads:
        pc.run_workload("W3", DRIVER, a.w3_queries, a.repeat, lambda n: w3(a.url, n),
                        dict(impl, in_flight=pc.W3_WINDOW))


if __name__ == "__main__":
    main()
