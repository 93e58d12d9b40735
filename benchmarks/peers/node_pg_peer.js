'use strict';
// W1/W2/W3 of pgco_bench with node-postgres ("pg" from npm, pure JavaScript protocol; Debian's
// node-pg 8.8 does not install beside this machine's NodeSource nodejs 20).
//
// Every query is a named statement ({name, text, values}), which node-postgres prepares once
// per connection and then only binds and executes; rows come as arrays (rowMode: 'array').
// W1: one pg.Client, `await client.query({name: 'w1', text: 'SELECT 1'})` in a loop.
// W2: pg.Pool({max: 10}) with all ten connections opened before the clock, 64 async tasks
//     each `await pool.query({name: 'w2', text: 'SELECT v FROM kv WHERE id = $1', values})`.
// W3: one pg.Client, `await client.query({name: 'w3', text: 'SELECT $1::int', values: [v]})`
//     one after the other: node-postgres does not pipeline (it would queue concurrent calls
//     and send each only after the previous completed, and pg 8.23 deprecates that), so one
//     query is in flight at a time.
const pg = require('pg');
const pc = require('./peercommon');

const DRIVER = 'node_pg';

async function connect(url) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
}

async function w1(url, n) {
  const c = await connect(url);
  try {
    const q = { name: 'w1', text: 'SELECT 1', rowMode: 'array' };
    await c.query(q); // prepares before the clock
    const sw = pc.stopwatch();
    for (let i = 0; i < n; ++i) {
      const r = await c.query(q);
      if (r.rows[0][0] !== 1) throw new Error('node_pg W1: wrong value');
    }
    return sw.stop(n);
  } finally {
    await c.end();
  }
}

async function kvSetup(url) {
  const c = await connect(url);
  try {
    for (const sql of pc.KV_SETUP) await c.query(sql);
    const shape = (await c.query(pc.KV_SHAPE)).rows[0].shape;
    if (shape !== pc.KV_SHAPE_OK)
      throw new Error(`W2 setup: table kv is not ids 1..100000 (count,min,max,ok: ${shape})`);
  } finally {
    await c.end();
  }
}

async function w2(url, ids) {
  const pool = new pg.Pool({ connectionString: url, max: pc.W2_CONNECTIONS });
  try {
    const held = await Promise.all(
      Array.from({ length: pc.W2_CONNECTIONS }, () => pool.connect()));
    for (const c of held) c.release();
    const sw = pc.stopwatch();
    await pc.shared(ids.length, pc.W2_TASKS, async (i) => {
      const r = await pool.query({ name: 'w2', text: 'SELECT v FROM kv WHERE id = $1',
        values: [ids[i]], rowMode: 'array' });
      if (r.rows.length !== 1 || r.rows[0][0].length !== 32)
        throw new Error('node_pg W2: wrong value');
    });
    return sw.stop(ids.length);
  } finally {
    await pool.end();
  }
}

async function w3(url, n) {
  const c = await connect(url);
  try {
    const text = 'SELECT $1::int';
    await c.query({ name: 'w3', text, values: [0], rowMode: 'array' });
    const sw = pc.stopwatch();
    for (let i = 0; i < n; ++i) {
      const v = pc.w3Value(i);
      const r = await c.query({ name: 'w3', text, values: [v], rowMode: 'array' });
      if (r.rows[0][0] !== v) throw new Error(`node_pg W3: ${r.rows[0][0]} for ${v}`);
    }
    return sw.stop(n);
  } finally {
    await c.end();
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
      { in_flight: 1 });
}

main().catch((e) => {
  console.error(`${DRIVER}: ${e.stack || e}`);
  process.exit(1);
});
