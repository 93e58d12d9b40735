'use strict';
// Shared by the Node.js peers: options, the kv table, timing, medians and JSON output.
// Workloads as in benchmarks/bench_main.cpp (docs/benchmarks.md); every workload: one
// unmeasured warm-up of a tenth of the count, then --repeat runs (default 3), every run and
// the median (wall time and client CPU separately) printed as JSON lines like pgco_bench.
// The drivers come from npm (Debian's node-pg does not install beside this machine's
// NodeSource nodejs): scripts/bench-peers installs them and sets NODE_PATH.

const W2_ROWS = 100000;
const W2_CONNECTIONS = 10;
const W2_TASKS = 64;
const W3_WINDOW = 256;

const KV_SETUP = [
  'CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v text)',
  'INSERT INTO kv (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100000) g ' +
    'ON CONFLICT DO NOTHING',
  'ANALYZE kv',
];
const KV_SHAPE =
  "SELECT count(*) || ',' || min(id) || ',' || max(id) || ',' || " +
  "count(*) FILTER (WHERE length(v) = 32) AS shape FROM kv";
const KV_SHAPE_OK = '100000,1,100000,100000';

function usage(driver, msg) {
  console.error(`${driver}: ${msg}\nusage: node ${driver}_peer.js [--url URL] ` +
    '[--workload W1,W2,W3] [--queries N] [--w2-queries N] [--w3-queries N] [--repeat N]');
  process.exit(2);
}

function parseArgs(driver) {
  const a = { url: process.env.DATABASE_URL, workloads: ['W1', 'W2', 'W3'], queries: 20000,
    w2Queries: 100000, w3Queries: 200000, repeat: 3 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i], v = argv[i + 1];
    if (v === undefined) usage(driver, `option ${k} needs a value`);
    if (k === '--url') a.url = v;
    else if (k === '--workload') a.workloads = v.split(',').filter((w) => w);
    else if (k === '--queries') a.queries = Number(v);
    else if (k === '--w2-queries') a.w2Queries = Number(v);
    else if (k === '--w3-queries') a.w3Queries = Number(v);
    else if (k === '--repeat') a.repeat = Number(v);
    else usage(driver, `unknown option ${k}`);
  }
  if (!a.url) usage(driver, '--url or DATABASE_URL is required');
  for (const w of a.workloads) if (!['W1', 'W2', 'W3'].includes(w)) usage(driver, `unknown workload ${w}`);
  for (const n of [a.queries, a.w2Queries, a.w3Queries, a.repeat])
    if (!(Number.isInteger(n) && n > 0)) usage(driver, 'counts must be positive integers');
  return a;
}

// Fixed-seed uniform ids in 1..100000 (mulberry32; the same sequence for every Node peer).
function w2Ids(n) {
  let s = 0x5eed2024;
  const ids = new Array(n);
  for (let i = 0; i < n; ++i) {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    ids[i] = (((t ^ (t >>> 14)) >>> 0) % W2_ROWS) + 1;
  }
  return ids;
}

const w3Value = (i) => i % 1000000000;

function stopwatch() {
  const wall = process.hrtime.bigint();
  const cpu = process.cpuUsage(); // user + system of the whole process, all threads
  return {
    stop(queries) {
      const c = process.cpuUsage(cpu);
      return { seconds: Number(process.hrtime.bigint() - wall) / 1e9,
        cpu: (c.user + c.system) / 1e6, queries };
    },
  };
}

function emit(workload, driver, m, stat, run, extra) {
  const line = { workload, driver, stat, run, queries: m.queries,
    seconds: Number(m.seconds.toFixed(4)), qps: Math.round(m.queries / m.seconds),
    cpu_us_per_query: Number((m.cpu * 1e6 / m.queries).toFixed(3)), ...(extra || {}) };
  console.log(JSON.stringify(line));
}

function median(xs) {
  const v = [...xs].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

// once(n) -> Promise of one run's measurement. Warm-up, `repeat` runs, median.
async function runWorkload(workload, driver, count, repeat, once, extra) {
  await once(Math.floor(count / 10) + 1);
  const runs = [];
  for (let r = 0; r < repeat; ++r) {
    runs.push(await once(count));
    emit(workload, driver, runs[r], 'run', r + 1, extra);
  }
  emit(workload, driver, { seconds: median(runs.map((m) => m.seconds)),
    cpu: median(runs.map((m) => m.cpu)), queries: count }, 'median', 0, extra);
}

// Runs `tasks` async workers that share `n` calls of query(i); the first error stops all.
async function shared(n, tasks, query) {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      try {
        await query(i);
      } catch (e) {
        next = n;
        throw e;
      }
    }
  };
  const ws = [];
  for (let t = 0; t < tasks; ++t) ws.push(worker());
  await Promise.all(ws);
}

module.exports = { W2_CONNECTIONS, W2_TASKS, W3_WINDOW, KV_SETUP, KV_SHAPE, KV_SHAPE_OK,
  parseArgs, w2Ids, w3Value, stopwatch, runWorkload, shared };
