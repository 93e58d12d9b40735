'use strict';
// W1/W2/W3 of pgco_bench with postgres.js ("postgres" from npm; no Debian package).
//
// postgres.js prepares every statement once per connection (prepare: true, the default) and
// pipelines: queries issued while others are outstanding on a connection go out at once (up
// to max_pipeline, default 100, per connection). Rows are read as arrays (.values()).
// W1: postgres(url, {max: 1}), `await sql`SELECT 1`` in a loop.
// W2: postgres(url, {max: 10}) with all ten connections opened before the clock (reserved and
//     released), 64 async tasks each `await sql`SELECT v FROM kv WHERE id = ${id}``.
// W3: postgres(url, {max: 1}), 256 async tasks each `await sql`SELECT ${v}::int``: postgres.js
//     pipelines them on the one connection (up to max_pipeline = 100 in flight).
const postgres = require('postgres');
const pc = require('./peercommon');

const DRIVER = 'postgres_js';

function open(url, max) {
  return postgres(url, { max, onnotice: () => {} });
}

async function w1(url, n) {
  const sql = open(url, 1);
  try {
    await sql`SELECT 1`.values(); // connects and prepares before the clock
    const sw = pc.stopwatch();
    for (let i = 0; i < n; ++i) {
      const r = await sql`SELECT 1`.values();
      if (r[0][0] !== 1) throw new Error('postgres_js W1: wrong value');
    }
    return sw.stop(n);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function kvSetup(url) {
  const sql = open(url, 1);
  try {
    for (const q of pc.KV_SETUP) await sql.unsafe(q);
    const shape = (await sql.unsafe(pc.KV_SHAPE))[0].shape;
    if (shape !== pc.KV_SHAPE_OK)
      throw new Error(`W2 setup: table kv is not ids 1..100000 (count,min,max,ok: ${shape})`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function w2(url, ids) {
  const sql = open(url, pc.W2_CONNECTIONS);
  try {
    const held = await Promise.all(
      Array.from({ length: pc.W2_CONNECTIONS }, () => sql.reserve()));
    for (const r of held) r.release();
    const sw = pc.stopwatch();
    await pc.shared(ids.length, pc.W2_TASKS, async (i) => {
      const r = await sql`SELECT v FROM kv WHERE id = ${ids[i]}`.values();
      if (r.length !== 1 || r[0][0].length !== 32) throw new Error('postgres_js W2: wrong value');
    });
    return sw.stop(ids.length);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function w3(url, n) {
  const sql = open(url, 1);
  try {
    await sql`SELECT ${0}::int`.values();
    const sw = pc.stopwatch();
    await pc.shared(n, pc.W3_WINDOW, async (i) => {
      const v = pc.w3Value(i);
      const r = await sql`SELECT ${v}::int`.values();
      if (r[0][0] !== v) throw new Error(`postgres_js W3: ${r[0][0]} for ${v}`);
    });
    return sw.stop(n);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function main() {
  const a = pc.parseArgs(DRIVER);
  if (a.workloads.includes('W1'))
    await pc.runWorkload('W1', DRIVER, a.queries, a.repeat, (n) => w1(a.url, n));
  if (a.workloads.includes('W2')) {
    await kvSetup(a.url);
    await pc.runWorkload('W2', DRIVER, a.w2Queries, a.repeat, (n) => w2(a.url, pc.w2Ids(n)));
  }
  if (a.workloads.includes('W3'))
    await pc.runWorkload('W3', DRIVER, a.w3Queries, a.repeat, (n) => w3(a.url, n),
      { in_flight: pc.W3_WINDOW, max_pipeline: 100 });
}

main().catch((e) => {
  console.error(`${DRIVER}: ${e.stack || e}`);
  process.exit(1);
});
