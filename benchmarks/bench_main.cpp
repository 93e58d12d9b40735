// Throughput and client CPU per query: pgco beside raw libpq, in one process and one run.
//
//   pgco_bench --url URL [--workload W1,W2,W3|all]
//              [--driver pgco,libpq,libpq_prepared,pgco_batch,libpq_prepared_busy,wire_floor|all]
//              [--queries 20000] [--w2-queries 100000] [--w3-queries 200000] [--repeat 5]
//              [--no-warmup] [--w3-window 256] [--w3-sync-every 100] [--w1-busy-ns 0]
//
// W1: one connection, sequential `SELECT 1` (`--queries` of them).
// W2: 10 connections, 64 concurrent tasks, `--w2-queries` point selects
//     `SELECT v FROM kv WHERE id = $1` with random ids over a 100,000-row table. pgco runs a
//     pool (connection_limit=10) on a single-threaded io_context with 64 coroutines; libpq runs
//     10 threads with one blocking connection each.
// W3: one connection, `--w3-queries` of `SELECT $1::int`, as many in flight as allowed. pgco
//     runs a pool with connection_limit=1 and 256 coroutines; libpq runs pipeline mode on a
//     non-blocking socket with at most `--w3-window` queries in flight and one PQpipelineSync
//     per `--w3-sync-every` queries.
//
// Drivers: `pgco`; `libpq`, the unnamed statement (PQexecParams, PQsendQueryParams: the server
// parses and plans every query); `libpq_prepared`, a named prepared statement made once per
// connection before the clock starts (PQexecPrepared, PQsendQueryPrepared). In W3 only,
// `pgco_batch`: one coroutine sending `--w3-sync-every` statements at a time through
// `pool.pipeline` (pgco's explicit batch API), for comparison with the callers of `pgco`.
// In W1 only, with `--w1-busy-ns N` > 0: `libpq_prepared_busy`, the libpq_prepared loop
// keeping the CPU busy for N ns (at least; no memory touched) before each query, which shows
// what a client's own time per query costs when it shares the server's CPU. In W1 only,
// `wire_floor`: the least work a client can do per query (a precomputed Bind/Execute/Sync sent
// with one send(), the answer taken with blocking recv() and compared, nothing decoded), the
// bound on what any driver can reach in W1.
//
// W1 lines also carry the server backend's CPU time and voluntary context switches (times it
// slept waiting for a query) per query, read from /proc when the server runs on this machine.
//
// Prints one JSON object per line: every run of every driver, then the medians and the
// pgco / libpq_prepared and pgco / libpq ratios ("stat":"ratio"; pgco_batch's are
// "stat":"ratio_batch"; wire_floor's "ratio_floor", libpq_prepared_busy's "ratio_busy"). Drivers
// alternate run by run so that drift on a shared machine affects all alike. `--driver pgco --repeat
// 1 --no-warmup` runs one driver once, nothing else (scripts/callgrind counts its instructions).

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;

namespace {

struct measurement
{
    double seconds = 0;
    double cpu_seconds = 0;
    long queries = 0;
    // The server backend's share (see server_probe); negative when unknown.
    double server_cpu_seconds = -1;
    double server_sleeps = -1;
};

/// The server backend's CPU time and the times it slept, from /proc, when the server runs on
/// this machine (scripts/bench's throwaway server does). With server and client on one CPU
/// they take turns, and how a client spends its turn decides how often the backend goes to
/// sleep waiting for the next query rather than finding it there: each such sleep and wake-up
/// is server CPU (docs/benchmarks.md, "Where W1 and W3 still trail").
struct server_probe
{
    int pid = 0;
    double cpu = -1;
    double sleeps = -1;

    /// Seconds on CPU and voluntary context switches of process `pid`; false if unreadable.
    static bool read(int pid, double& cpu_s, double& sleeps_n)
    {
        if (pid <= 0)
            return false;
        std::string dir = "/proc/" + std::to_string(pid);
        unsigned long long ns = 0, vol = 0;
        std::FILE* f = std::fopen((dir + "/schedstat").c_str(), "r");
        if (!f)
            return false;
        bool ok = std::fscanf(f, "%llu", &ns) == 1;
        std::fclose(f);
        f = std::fopen((dir + "/status").c_str(), "r");
        if (!f)
            return false;
        char line[256];
        bool found = false;
        while (std::fgets(line, sizeof line, f))
            if (std::sscanf(line, "voluntary_ctxt_switches: %llu", &vol) == 1) {
                found = true;
                break;
            }
        std::fclose(f);
        if (!ok || !found)
            return false;
        cpu_s = static_cast<double>(ns) / 1e9;
        sleeps_n = static_cast<double>(vol);
        return true;
    }
    void start(int backend_pid)
    {
        pid = backend_pid;
        if (!read(pid, cpu, sleeps))
            pid = 0;
    }
    void stop(measurement& m) const
    {
        double c = 0, s = 0;
        if (pid > 0 && read(pid, c, s)) {
            m.server_cpu_seconds = c - cpu;
            m.server_sleeps = s - sleeps;
        }
    }
};

double cpu_now()
{
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/// Wall clock and process CPU (all threads) from `start()` to `stop()`, and the server
/// backend's share when its pid is given and readable.
struct stopwatch
{
    std::chrono::steady_clock::time_point wall;
    double cpu = 0;
    server_probe server;

    void start(int backend_pid = 0)
    {
        server.start(backend_pid);
        wall = std::chrono::steady_clock::now();
        cpu = cpu_now();
    }
    measurement stop(long queries) const
    {
        measurement m;
        m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
        m.cpu_seconds = cpu_now() - cpu;
        m.queries = queries;
        server.stop(m);
        return m;
    }
};

template <class F>
measurement timed(long queries, F&& body, int backend_pid = 0)
{
    stopwatch sw;
    sw.start(backend_pid);
    body();
    return sw.stop(queries);
}

/// Keeps the CPU busy for at least `d` without touching memory (two clock reads at least).
void busy_for(std::chrono::nanoseconds d)
{
    auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
}

PGconn* libpq_connect(const std::string& conninfo)
{
    PGconn* conn = PQconnectdb(conninfo.c_str());
    if (PQstatus(conn) != CONNECTION_OK) {
        std::string msg = std::string("libpq connect: ") + PQerrorMessage(conn);
        PQfinish(conn);
        throw std::runtime_error(msg);
    }
    return conn;
}

/// Closes a libpq connection on every way out of a driver.
struct libpq_guard
{
    PGconn* conn;
    ~libpq_guard() { PQfinish(conn); }
};

/// Makes the named prepared statement `name` on `conn` (before any clock starts: a client
/// with a statement cache pays this once per connection).
void libpq_prepare(PGconn* conn, const char* name, const char* sql, int nparams, const Oid* types)
{
    PGresult* r = PQprepare(conn, name, sql, nparams, types);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok)
        throw std::runtime_error(std::string("libpq prepare: ") + PQerrorMessage(conn));
}

constexpr Oid int4_oid = 23; // the parameter type pgco binds for an int

// ---- W1: one connection, sequential SELECT 1 ----

constexpr const char* w1_sql = "SELECT 1";

// W1 with libpq's synchronous API: the floor any client library is measured against.
// PQexecParams uses the same extended protocol (Parse/Bind/Execute, unnamed statement) as
// pgco, so both ask the server for the same work; `prepared` skips the Parse with a named
// statement (PQexecPrepared), as a statement cache would. `busy`: CPU work the client does
// before each query (the `libpq_prepared_busy` driver), to show what a client's own time per
// query costs in this workload beyond itself.
measurement w1_libpq(const std::string& conninfo, long queries, bool prepared,
                     std::chrono::nanoseconds busy = {})
{
    PGconn* conn = libpq_connect(conninfo);
    libpq_guard guard{conn};
    if (prepared)
        libpq_prepare(conn, "w1", w1_sql, 0, nullptr);
    return timed(
        queries,
        [&] {
            for (long i = 0; i < queries; ++i) {
                if (busy.count() > 0)
                    busy_for(busy);
                PGresult* r =
                    prepared ? PQexecPrepared(conn, "w1", 0, nullptr, nullptr, nullptr, 0)
                             : PQexecParams(conn, w1_sql, 0, nullptr, nullptr, nullptr, nullptr, 0);
                bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == '1';
                PQclear(r);
                if (!ok)
                    throw std::runtime_error(std::string("libpq query: ") + PQerrorMessage(conn));
            }
        },
        PQbackendPID(conn));
}

// W1's floor: the least a client can do per query, to bound what any driver can reach. On a
// connection where "w1" is prepared, each query is one send() of a precomputed Bind, Execute
// and Sync (no Describe: the statement's shape is known) on the socket made blocking, and
// blocking recv() calls until the 37 bytes of the answer are in (one call each here, as a
// rule); nothing is parsed but a check of the value and of ReadyForQuery. The server does at
// most what it does for pgco. A real driver also builds a result and decodes the value; no
// driver can make a round trip cheaper than this one, so none can be faster by more than
// this loop is (docs/benchmarks.md, "W1's floor").
measurement w1_wire_floor(const std::string& conninfo, long queries)
{
    PGconn* conn = libpq_connect(conninfo);
    libpq_guard guard{conn};
    libpq_prepare(conn, "w1", w1_sql, 0, nullptr);
    // Bind (unnamed portal, statement "w1", no parameters, text results), Execute (all rows),
    // Sync: the bytes pgco writes for a prepared statement it has described.
    // clang-format off
    static constexpr char request[] = {
        'B', 0, 0, 0, 14, 0, 'w', '1', 0, 0, 0, 0, 0, 0, 0, // Bind
        'E', 0, 0, 0, 9, 0, 0, 0, 0, 0,                      // Execute
        'S', 0, 0, 0, 4};                                    // Sync
    // BindComplete, DataRow (one column, "1"), CommandComplete "SELECT 1", ReadyForQuery idle.
    static constexpr char answer[] = {
        '2', 0, 0, 0, 4,
        'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, '1',
        'C', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0,
        'Z', 0, 0, 0, 5, 'I'};
    // clang-format on
    int fd = PQsocket(conn);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        throw std::runtime_error("wire_floor: cannot make the socket blocking");
    // libpq expects its socket non-blocking again before PQfinish.
    struct restore_flags
    {
        int fd, flags;
        ~restore_flags() { fcntl(fd, F_SETFL, flags); }
    } restore{fd, flags};
    char in[sizeof answer];
    return timed(
        queries,
        [&] {
            for (long i = 0; i < queries; ++i) {
                if (send(fd, request, sizeof request, MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(sizeof request))
                    throw std::runtime_error("wire_floor: send failed");
                std::size_t got = 0;
                while (got < sizeof answer) {
                    ssize_t n = recv(fd, in + got, sizeof answer - got, 0);
                    if (n <= 0)
                        throw std::runtime_error("wire_floor: connection lost");
                    got += static_cast<std::size_t>(n);
                }
                if (std::memcmp(in, answer, sizeof answer) != 0)
                    throw std::runtime_error("wire_floor: unexpected answer");
            }
        },
        PQbackendPID(conn));
}

measurement w1_pgco(const pgco::pool_options& opts, long queries)
{
    asio::io_context io(1);
    measurement m;
    std::exception_ptr failure;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            pgco::connection c(io.get_executor());
            co_await c.connect(opts);
            stopwatch sw;
            sw.start(c.backend_pid());
            for (long i = 0; i < queries; ++i) {
                if (co_await c.query_one<int>(w1_sql) != 1)
                    throw std::runtime_error("pgco returned a wrong value");
            }
            m = sw.stop(queries);
        },
        [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
    return m;
}

// ---- pgco through a pool: `tasks` coroutines sharing `queries` ----

/// Runs `queries` queries (i = 0, 1, ...) from `tasks` coroutines on a pool of `connections`
/// on a single-threaded io_context. Each task is `task(pool, claim)`: a loop that runs query
/// `i` for every `i = claim()` until that is negative, as an application's task would loop
/// (one coroutine per task, not one more frame per query). All connections are opened before
/// the clock starts, as the libpq drivers do.
template <class Task>
measurement pool_workload(const char* workload, pgco::pool_options opts, std::size_t connections,
                          int tasks, long queries, Task task)
{
    opts.connection_limit = connections;
    asio::io_context io(1);
    pgco::pool pool(io.get_executor(), opts);
    measurement m;
    std::exception_ptr failure;
    long next = 0;
    int live = 0;
    stopwatch sw;

    auto claim = [&next, queries]() noexcept { return next < queries ? next++ : -1L; };
    auto finish = [&] {
        if (--live == 0) {
            m = sw.stop(queries);
            asio::co_spawn(io, pool.close(std::chrono::seconds(5)), asio::detached);
        }
    };

    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            {
                std::vector<pgco::pooled_connection> held;
                for (std::size_t i = 0; i < connections; ++i)
                    held.push_back(co_await pool.acquire());
            }
            live = tasks;
            sw.start();
            for (int t = 0; t < tasks; ++t)
                asio::co_spawn(io, task(pool, claim), [&](std::exception_ptr e) {
                    if (e) {
                        next = queries; // stop the others
                        if (!failure)
                            failure = e;
                    }
                    finish();
                });
        },
        [&](std::exception_ptr e) {
            if (e) {
                failure = e;
                asio::co_spawn(io, pool.close(std::chrono::seconds(5)), asio::detached);
            }
        });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
    auto st = pool.stats();
    if (st.connections_opened != connections || st.acquire_timeouts != 0)
        std::fprintf(stderr,
                     "%s pgco: unexpected pool stats: opened %llu connections, %llu timeouts\n",
                     workload, static_cast<unsigned long long>(st.connections_opened),
                     static_cast<unsigned long long>(st.acquire_timeouts));
    return m;
}

// ---- W2: 10 connections, 64 tasks, random point selects ----

constexpr int w2_rows = 100000;
constexpr std::size_t w2_connections = 10;
constexpr int w2_tasks = 64;
constexpr const char* w2_sql = "SELECT v FROM kv WHERE id = $1";

/// Creates and fills `kv` if it is missing or incomplete, then checks that it holds exactly
/// the ids 1..100,000 (a table left by someone else would change what W2 measures).
void w2_prepare(const std::string& conninfo)
{
    PGconn* conn = libpq_connect(conninfo);
    libpq_guard guard{conn};
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr); // "kv already exists"
    auto run = [&](const char* sql) {
        PGresult* r = PQexec(conn, sql);
        auto st = PQresultStatus(r);
        bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        std::string value = ok && st == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "";
        std::string msg = ok ? "" : std::string(PQerrorMessage(conn));
        PQclear(r);
        if (!ok)
            throw std::runtime_error(std::string("W2 setup (") + sql + "): " + msg);
        return value;
    };
    run("CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v text)");
    run("INSERT INTO kv (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100000) g "
        "ON CONFLICT DO NOTHING");
    run("ANALYZE kv");
    auto shape = run("SELECT count(*) || ',' || min(id) || ',' || max(id) || ',' || "
                     "count(*) FILTER (WHERE length(v) = 32) FROM kv");
    if (shape != "100000,1,100000,100000")
        throw std::runtime_error("W2 setup: table kv is not ids 1..100000 with 32-character "
                                 "values (count,min,max,ok: " +
                                 shape + ")");
}

/// The ids all drivers query, in order: the i-th query of a run asks for `ids[i]`. A fixed
/// seed, so every run and every driver asks for the same ids.
std::vector<int> w2_ids(long queries)
{
    std::mt19937_64 rng(0x5eed'2024);
    std::uniform_int_distribution<int> dist(1, w2_rows);
    std::vector<int> ids(static_cast<std::size_t>(queries));
    for (auto& id : ids)
        id = dist(rng);
    return ids;
}

// md5 in hex: every row's value is 32 characters.
bool w2_value_ok(std::size_t length)
{
    return length == 32;
}

measurement w2_libpq(const std::string& conninfo, const std::vector<int>& ids, bool prepared)
{
    const long queries = static_cast<long>(ids.size());
    const Oid types[1] = {int4_oid};
    std::vector<PGconn*> conns;
    try {
        for (std::size_t i = 0; i < w2_connections; ++i) {
            conns.push_back(libpq_connect(conninfo));
            if (prepared)
                libpq_prepare(conns.back(), "w2", w2_sql, 1, types);
        }
    } catch (...) {
        for (auto* c : conns)
            PQfinish(c);
        throw;
    }
    std::atomic<long> next{0};
    std::mutex failure_mu;
    std::exception_ptr failure;
    auto worker = [&](PGconn* conn) {
        try {
            char buf[16];
            const char* values[1] = {buf};
            for (;;) {
                long i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= queries)
                    break;
                std::snprintf(buf, sizeof buf, "%d", ids[static_cast<std::size_t>(i)]);
                PGresult* r =
                    prepared ? PQexecPrepared(conn, "w2", 1, values, nullptr, nullptr, 0)
                             : PQexecParams(conn, w2_sql, 1, types, values, nullptr, nullptr, 0);
                bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                          w2_value_ok(static_cast<std::size_t>(PQgetlength(r, 0, 0)));
                PQclear(r);
                if (!ok)
                    throw std::runtime_error(std::string("libpq W2 query: ") +
                                             PQerrorMessage(conn));
            }
        } catch (...) {
            next.store(queries); // stop the others
            std::lock_guard lock(failure_mu);
            if (!failure)
                failure = std::current_exception();
        }
    };
    auto m = timed(queries, [&] {
        std::vector<std::thread> threads;
        for (auto* c : conns)
            threads.emplace_back(worker, c);
        for (auto& t : threads)
            t.join();
    });
    for (auto* c : conns)
        PQfinish(c);
    if (failure)
        std::rethrow_exception(failure);
    return m;
}

measurement w2_pgco(const pgco::pool_options& opts, const std::vector<int>& ids)
{
    auto task = [&ids](pgco::pool& pool, auto claim) -> asio::awaitable<void> {
        for (long i; (i = claim()) >= 0;) {
            int id = ids[static_cast<std::size_t>(i)];
            auto v = co_await pool.query_one<std::string>(w2_sql, id);
            if (!w2_value_ok(v.size()))
                throw std::runtime_error("pgco W2 returned a wrong value: " + v);
        }
    };
    return pool_workload("W2", opts, w2_connections, w2_tasks, static_cast<long>(ids.size()), task);
}

// ---- W3: one connection, SELECT $1::int, as many in flight as allowed ----

constexpr const char* w3_sql = "SELECT $1::int";
constexpr int w3_tasks = 256;

struct w3_options
{
    long window = 256;     ///< most queries sent and not yet answered
    long sync_every = 100; ///< queries per PQpipelineSync (libpq 15 flushes on every Sync)
};

/// The value the i-th query of a W3 run sends and expects back.
int w3_value(long i)
{
    return static_cast<int>(i % 1000000000);
}

/// W3 with libpq's pipeline mode on a non-blocking socket: keeps up to `window` queries in
/// flight, sends one Sync per `sync_every` queries (and after the last), flushes, reads
/// results as they arrive and waits in poll() only when nothing can be sent or read.
/// `prepared`: PQsendQueryPrepared on a named statement; else PQsendQueryParams (unnamed:
/// Parse, Bind, Describe, Execute per query).
measurement w3_libpq(const std::string& conninfo, long queries, bool prepared, w3_options w3)
{
    if (w3.window < w3.sync_every) // results after the last Sync would never come
        throw std::runtime_error("W3: --w3-window must be at least --w3-sync-every");
    PGconn* conn = libpq_connect(conninfo);
    libpq_guard guard{conn};
    const Oid types[1] = {int4_oid};
    if (prepared)
        libpq_prepare(conn, "w3", w3_sql, 1, types);
    if (PQsetnonblocking(conn, 1) != 0 || PQenterPipelineMode(conn) != 1)
        throw std::runtime_error(std::string("libpq pipeline mode: ") + PQerrorMessage(conn));
    auto fail = [&](const char* what) {
        throw std::runtime_error(std::string("libpq W3 ") + what + ": " + PQerrorMessage(conn));
    };
    const int fd = PQsocket(conn);

    long sent = 0, received = 0, syncs_sent = 0, syncs_received = 0, since_sync = 0;
    char buf[16];
    const char* values[1] = {buf};

    // Queues queries (and Syncs) while the window allows; PQpipelineSync flushes.
    auto send_some = [&] {
        while (sent < queries && sent - received < w3.window) {
            std::snprintf(buf, sizeof buf, "%d", w3_value(sent));
            int ok = prepared
                         ? PQsendQueryPrepared(conn, "w3", 1, values, nullptr, nullptr, 0)
                         : PQsendQueryParams(conn, w3_sql, 1, types, values, nullptr, nullptr, 0);
            if (!ok)
                fail("send");
            ++sent;
            if (++since_sync == w3.sync_every || sent == queries) {
                if (PQpipelineSync(conn) != 1)
                    fail("sync");
                ++syncs_sent;
                since_sync = 0;
            }
        }
    };
    // Takes every complete result libpq already holds; true if there was any.
    auto drain = [&] {
        bool progress = false;
        int nulls = 0; // a NULL ends one query's results; two in a row: nothing more yet
        while ((received < sent || syncs_received < syncs_sent) && !PQisBusy(conn)) {
            PGresult* r = PQgetResult(conn);
            if (!r) {
                if (++nulls == 2)
                    break;
                continue;
            }
            nulls = 0;
            progress = true;
            auto st = PQresultStatus(r);
            if (st == PGRES_PIPELINE_SYNC) {
                ++syncs_received;
            } else if (st == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                       std::strtol(PQgetvalue(r, 0, 0), nullptr, 10) == w3_value(received)) {
                ++received;
            } else {
                std::string msg = std::string("libpq W3 result ") + PQresStatus(st) + ": " +
                                  PQresultErrorMessage(r);
                PQclear(r);
                throw std::runtime_error(msg);
            }
            PQclear(r);
        }
        return progress;
    };

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    auto m = timed(queries, [&] {
        while (received < queries || syncs_received < syncs_sent) {
            send_some();
            int pending = PQflush(conn); // 1: some output is still waiting for the socket
            if (pending < 0)
                fail("flush");
            if (drain()) // PQflush may have read input while the socket was full
                continue;
            pollfd p{fd, static_cast<short>(POLLIN | (pending ? POLLOUT : 0)), 0};
            int n = ::poll(&p, 1, 1000);
            if (n < 0 && errno != EINTR)
                throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
            if (std::chrono::steady_clock::now() > deadline)
                throw std::runtime_error("libpq W3: no progress for 10 minutes");
            if (n > 0 && (p.revents & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(conn))
                fail("read");
        }
    });
    return m;
}

measurement w3_pgco(const pgco::pool_options& opts, long queries)
{
    auto task = [](pgco::pool& pool, auto claim) -> asio::awaitable<void> {
        for (long i; (i = claim()) >= 0;) {
            int v = w3_value(i);
            int got = co_await pool.query_one<int>(w3_sql, v);
            if (got != v)
                throw std::runtime_error("pgco W3 returned " + std::to_string(got) + " for " +
                                         std::to_string(v));
        }
    };
    return pool_workload("W3", opts, 1, w3_tasks, queries, task);
}

/// W3 through pgco's explicit batch API instead of concurrent callers: one coroutine sends
/// `per_batch` statements at a time with `pool.pipeline` (one round trip, one Sync each), the
/// shape of the libpq_prepared driver. For comparison; the W3 target is for callers.
measurement w3_pgco_batch(const pgco::pool_options& opts, long queries, long per_batch)
{
    long batches = (queries + per_batch - 1) / per_batch;
    pgco::batch b; // reused: its statements keep their buffers
    auto task = [&b, queries, per_batch](pgco::pool& pool, auto claim) -> asio::awaitable<void> {
        for (long n; (n = claim()) >= 0;) {
            long first = n * per_batch;
            long end = std::min(queries, first + per_batch);
            b.clear();
            for (long i = first; i < end; ++i)
                b.add(w3_sql, w3_value(i));
            auto results = co_await pool.pipeline(b);
            for (long i = first; i < end; ++i) {
                int got = results[static_cast<std::size_t>(i - first)].template row_as<int>(0);
                if (got != w3_value(i))
                    throw std::runtime_error("pgco W3 batch returned " + std::to_string(got) +
                                             " for " + std::to_string(w3_value(i)));
            }
        }
    };
    auto m = pool_workload("W3", opts, 1, 1, batches, task);
    m.queries = queries;
    return m;
}

// ---- output ----

void print(const char* workload, const std::string& driver, const measurement& m, const char* stat,
           int run)
{
    auto per_query = [&](double v) { return v / static_cast<double>(m.queries); };
    std::printf("{\"workload\":\"%s\",\"driver\":\"%s\",\"stat\":\"%s\",\"run\":%d,"
                "\"queries\":%ld,\"seconds\":%.4f,\"qps\":%.0f,\"cpu_us_per_query\":%.3f",
                workload, driver.c_str(), stat, run, m.queries, m.seconds, m.queries / m.seconds,
                per_query(m.cpu_seconds) * 1e6);
    if (m.server_cpu_seconds >= 0)
        std::printf(",\"server_cpu_us_per_query\":%.3f,\"server_sleeps_per_query\":%.3f",
                    per_query(m.server_cpu_seconds) * 1e6, per_query(m.server_sleeps));
    std::printf("}\n");
    std::fflush(stdout);
}

measurement median(std::vector<measurement> runs)
{
    auto mid = [&](auto key) {
        std::vector<double> v;
        for (auto& r : runs)
            v.push_back(key(r));
        std::sort(v.begin(), v.end());
        return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    measurement m;
    m.queries = runs.front().queries;
    m.seconds = mid([](const measurement& r) { return r.seconds; });
    m.cpu_seconds = mid([](const measurement& r) { return r.cpu_seconds; });
    if (std::all_of(runs.begin(), runs.end(),
                    [](const measurement& r) { return r.server_cpu_seconds >= 0; })) {
        m.server_cpu_seconds = mid([](const measurement& r) { return r.server_cpu_seconds; });
        m.server_sleeps = mid([](const measurement& r) { return r.server_sleeps; });
    }
    return m;
}

struct driver
{
    std::string name;
    std::function<measurement()> run;
    std::function<void()> warm; ///< a shorter unmeasured run
};

/// Runs the drivers `repeat` times, alternating, after one unmeasured warm-up of each (unless
/// `warmup` is false); prints every run, the medians and the ratios of pgco to each libpq
/// driver that ran.
void compare(const char* workload, int repeat, bool warmup, const std::vector<driver>& drivers)
{
    if (drivers.empty())
        return;
    std::map<std::string, std::vector<measurement>> runs;
    // So that every driver finds a warm server and warm caches.
    if (warmup)
        for (auto& d : drivers)
            d.warm();
    for (int r = 0; r < repeat; ++r) {
        for (auto& d : drivers) {
            runs[d.name].push_back(d.run());
            print(workload, d.name, runs[d.name].back(), "run", r + 1);
        }
    }
    std::map<std::string, measurement> medians;
    for (auto& d : drivers) {
        medians[d.name] = median(runs[d.name]);
        print(workload, d.name, medians[d.name], "median", 0);
    }
    // "ratio" lines are pgco's; the explicit-batch driver's are "ratio_batch", the busy libpq
    // loop's "ratio_busy" and the floor's "ratio_floor" (these two against libpq_prepared only).
    const std::pair<const char*, const char*> ratio_of[] = {{"pgco", "ratio"},
                                                            {"pgco_batch", "ratio_batch"},
                                                            {"libpq_prepared_busy", "ratio_busy"},
                                                            {"wire_floor", "ratio_floor"}};
    for (auto [driver, stat] : ratio_of) {
        if (!medians.count(driver))
            continue;
        const auto& ours = medians[driver];
        for (const char* baseline : {"libpq_prepared", "libpq"}) {
            bool prepared_only =
                std::strcmp(stat, "ratio_busy") == 0 || std::strcmp(stat, "ratio_floor") == 0;
            if (!medians.count(baseline) || (prepared_only && std::strcmp(baseline, "libpq") == 0))
                continue;
            const auto& base = medians[baseline];
            std::printf("{\"workload\":\"%s\",\"stat\":\"%s\",\"baseline\":\"%s\","
                        "\"qps_ratio\":%.3f,\"cpu_ratio\":%.3f",
                        workload, stat, baseline, base.seconds / ours.seconds,
                        ours.cpu_seconds / base.cpu_seconds);
            if (ours.server_cpu_seconds >= 0 && base.server_cpu_seconds > 0)
                std::printf(",\"server_cpu_ratio\":%.3f",
                            ours.server_cpu_seconds / base.server_cpu_seconds);
            std::printf(",\"repeat\":%d}\n", repeat);
        }
    }
    std::fflush(stdout);
}

/// "a,b,c" -> {a, b, c}; "all" -> `all`. Unknown names fail.
std::set<std::string> parse_list(const std::string& text, const std::set<std::string>& all,
                                 const char* what)
{
    if (text == "all")
        return all;
    std::set<std::string> out;
    std::stringstream in(text);
    std::string item;
    while (std::getline(in, item, ',')) {
        if (!all.count(item))
            throw std::invalid_argument(std::string("unknown ") + what + " " + item);
        out.insert(item);
    }
    return out;
}

int usage()
{
    std::fprintf(
        stderr,
        "usage: pgco_bench --url URL [--workload W1,W2,W3|all] "
        "[--driver pgco,libpq,libpq_prepared,pgco_batch,libpq_prepared_busy,wire_floor|all] "
        "[--queries N] "
        "[--w2-queries N] "
        "[--w3-queries N] [--repeat N] [--no-warmup] [--w3-window N] "
        "[--w3-sync-every N] [--w1-busy-ns N]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    std::string url;
    std::string workload_list = "all";
    std::string driver_list = "all";
    long queries = 20000;
    long w2_queries = 100000;
    long w3_queries = 200000;
    int repeat = 5;
    bool warmup = true;
    w3_options w3;
    long w1_busy_ns = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--no-warmup") {
            warmup = false;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "option %s needs a value\n", a.c_str());
            return usage();
        }
        const char* v = argv[++i];
        if (a == "--url")
            url = v;
        else if (a == "--workload")
            workload_list = v;
        else if (a == "--driver")
            driver_list = v;
        else if (a == "--queries")
            queries = std::atol(v);
        else if (a == "--w2-queries")
            w2_queries = std::atol(v);
        else if (a == "--w3-queries")
            w3_queries = std::atol(v);
        else if (a == "--repeat")
            repeat = std::atoi(v);
        else if (a == "--w3-window")
            w3.window = std::atol(v);
        else if (a == "--w3-sync-every")
            w3.sync_every = std::atol(v);
        else if (a == "--w1-busy-ns")
            w1_busy_ns = std::atol(v);
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return usage();
        }
    }
    if (url.empty()) {
        if (const char* env = std::getenv("DATABASE_URL"))
            url = env;
    }
    std::set<std::string> workloads, drivers;
    try {
        workloads = parse_list(workload_list, {"W1", "W2", "W3"}, "workload");
        drivers = parse_list(
            driver_list,
            {"pgco", "libpq", "libpq_prepared", "pgco_batch", "libpq_prepared_busy", "wire_floor"},
            "driver");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return usage();
    }
    if (url.empty() || workloads.empty() || drivers.empty() || queries <= 0 || w2_queries <= 0 ||
        w3_queries <= 0 || repeat <= 0 || w3.sync_every <= 0 || w3.window < w3.sync_every ||
        w1_busy_ns < 0)
        return usage();
    // The busy loop runs only when asked for, whatever --driver says.
    if (w1_busy_ns == 0)
        drivers.erase("libpq_prepared_busy");

    // The drivers in the order they alternate, filtered by --driver.
    auto pick = [&](std::vector<driver> all) {
        std::vector<driver> out;
        for (auto& d : all)
            if (drivers.count(d.name))
                out.push_back(std::move(d));
        return out;
    };
    try {
        auto opts = pgco::pool_options::from_url(url);
        const std::string& ci = opts.conninfo;
        if (workloads.count("W1")) {
            long warm = queries / 10 + 1;
            std::chrono::nanoseconds busy(w1_busy_ns);
            compare("W1", repeat, warmup,
                    pick({{"libpq", [&] { return w1_libpq(ci, queries, false); },
                           [&] { w1_libpq(ci, warm, false); }},
                          {"libpq_prepared", [&] { return w1_libpq(ci, queries, true); },
                           [&] { w1_libpq(ci, warm, true); }},
                          {"pgco", [&] { return w1_pgco(opts, queries); },
                           [&] { w1_pgco(opts, warm); }},
                          {"libpq_prepared_busy", [&] { return w1_libpq(ci, queries, true, busy); },
                           [&] { w1_libpq(ci, warm, true, busy); }},
                          {"wire_floor", [&] { return w1_wire_floor(ci, queries); },
                           [&] { w1_wire_floor(ci, warm); }}}));
        }
        if (workloads.count("W2")) {
            w2_prepare(ci);
            auto ids = w2_ids(w2_queries);
            auto warm = w2_ids(w2_queries / 10 + 1);
            compare(
                "W2", repeat, warmup,
                pick({{"libpq", [&] { return w2_libpq(ci, ids, false); },
                       [&] { w2_libpq(ci, warm, false); }},
                      {"libpq_prepared", [&] { return w2_libpq(ci, ids, true); },
                       [&] { w2_libpq(ci, warm, true); }},
                      {"pgco", [&] { return w2_pgco(opts, ids); }, [&] { w2_pgco(opts, warm); }}}));
        }
        if (workloads.count("W3")) {
            long warm = w3_queries / 10 + 1;
            compare(
                "W3", repeat, warmup,
                pick({{"libpq", [&] { return w3_libpq(ci, w3_queries, false, w3); },
                       [&] { w3_libpq(ci, warm, false, w3); }},
                      {"libpq_prepared", [&] { return w3_libpq(ci, w3_queries, true, w3); },
                       [&] { w3_libpq(ci, warm, true, w3); }},
                      {"pgco", [&] { return w3_pgco(opts, w3_queries); },
                       [&] { w3_pgco(opts, warm); }},
                      {"pgco_batch", [&] { return w3_pgco_batch(opts, w3_queries, w3.sync_every); },
                       [&] { w3_pgco_batch(opts, warm, w3.sync_every); }}}));
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "benchmark failed: %s\n", e.what());
        return 1;
    }
}
