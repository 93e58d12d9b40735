#!/usr/bin/python3
"""W1/W2/W3 of pgco_bench with asyncpg (Debian python3-asyncpg), on uvloop when installed.

W1: one connection, `await conn.fetchval("SELECT 1")` in a loop.
W2: asyncpg.create_pool(min_size=10, max_size=10) (all ten open before the clock), 64 tasks
    each `await pool.fetchval("SELECT v FROM kv WHERE id = $1", id)`.
W3: one connection, `await conn.fetchval("SELECT $1::int", v)` one after the other: an asyncpg
    connection runs one operation at a time ("another operation is in progress" otherwise)
    and does not pipeline separate queries (executemany does, but is a different workload).
asyncpg prepares and caches every statement per connection (statement_cache_size).
Its pool resets a connection when it is released (Connection.reset: one more round trip,
`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`), so each W2 query
costs two round trips. ASYNCPG_PEER_NO_RESET=1 uses a Connection subclass with an empty
reset query instead (not asyncpg's default; reported as driver "asyncpg_noreset").
"""

import os

import asyncio

import asyncpg

import peercommon as pc

DRIVER = "asyncpg"
NO_RESET = os.environ.get("ASYNCPG_PEER_NO_RESET") == "1"
try:
    import uvloop
except ImportError:  # plain asyncio loop
    uvloop = None


async def w1(url, n):
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT 1") != 1:  # prepares before the clock
            pc.fail("asyncpg W1: wrong value")
        sw = pc.Stopwatch()
        for _ in range(n):
            if await conn.fetchval("SELECT 1") != 1:
                pc.fail("asyncpg W1: wrong value")
        return sw.stop(n)
    finally:
        await conn.close()


async def kv_setup(url):
    conn = await asyncpg.connect(url)
    try:
        for sql in pc.KV_SETUP:
            await conn.execute(sql)
        shape = await conn.fetchval(pc.KV_SHAPE)
        if shape != pc.KV_SHAPE_OK:
            pc.fail(f"W2 setup: table kv is not ids 1..100000 (count,min,max,ok: {shape})")
    finally:
        await conn.close()


class NoResetConnection(asyncpg.Connection):
    def _get_reset_query(self):
        return ""


async def w2(url, ids):
    extra = {"connection_class": NoResetConnection} if NO_RESET else {}
    pool = await asyncpg.create_pool(url, min_size=pc.W2_CONNECTIONS,
                                     max_size=pc.W2_CONNECTIONS, **extra)
    try:
        n = len(ids)
        state = {"next": 0}

        async def worker():
            while state["next"] < n:
                i = state["next"]
                state["next"] = i + 1
                v = await pool.fetchval("SELECT v FROM kv WHERE id = $1", ids[i])
                if v is None or len(v) != 32:
                    raise RuntimeError(f"asyncpg W2: wrong value {v!r}")

        sw = pc.Stopwatch()
        await asyncio.gather(*(worker() for _ in range(pc.W2_TASKS)))
        return sw.stop(n)
    finally:
        await pool.close()


async def w3(url, n):
    conn = await asyncpg.connect(url)
    try:
        await conn.fetchval("SELECT $1::int", 0)
        sw = pc.Stopwatch()
        for i in range(n):
            v = pc.w3_value(i)
            got = await conn.fetchval("SELECT $1::int", v)
            if got != v:
                pc.fail(f"asyncpg W3: {got} for {v}")
        return sw.stop(n)
    finally:
        await conn.close()


def main():
    a = pc.parse_args(DRIVER)
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop_name = "uvloop" if uvloop is not None else "asyncio"
    if "W1" in a.workloads:
        pc.run_workload("W1", DRIVER, a.queries, a.repeat,
                        lambda n: asyncio.run(w1(a.url, n)), {"loop": loop_name})
    if "W2" in a.workloads:
        asyncio.run(kv_setup(a.url))
        pc.run_workload("W2", DRIVER + ("_noreset" if NO_RESET else ""), a.w2_queries, a.repeat,
                        lambda n: asyncio.run(w2(a.url, pc.w2_ids(n))), {"loop": loop_name})
    if "W3" in a.workloads:
        pc.run_workload("W3", DRIVER, a.w3_queries, a.repeat,
                        lambda n: asyncio.run(w3(a.url, n)),
                        {"loop": loop_name, "in_flight": 1})


if __name__ == "__main__":
    main()
