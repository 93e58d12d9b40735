// Throughput and client CPU per query: pgco beside raw libpq, in one process and one run.
//
//   pgco_bench --url URL [--workload W1|W2|all] [--queries 20000] [--w2-queries 100000]
//              [--repeat 5]
//
// W1: one connection, sequential `SELECT 1` (`--queries` of them).
// W2: 10 connections, 64 concurrent tasks, `--w2-queries` point selects
//     `SELECT v FROM kv WHERE id = $1` with random ids over a 100,000-row table. pgco runs a
//     pool (connection_limit=10) on a single-threaded io_context with 64 coroutines; libpq runs
//     10 threads with one blocking connection each.
//
// Prints one JSON object per line: every run of every driver, then the medians and the
// pgco / libpq ratios. Drivers alternate run by run so that drift on a shared machine
// affects both alike.

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <libpq-fe.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <random>
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
};

double cpu_now()
{
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/// Wall clock and process CPU (all threads) from `start()` to `stop()`.
struct stopwatch
{
    std::chrono::steady_clock::time_point wall;
    double cpu = 0;

    void start()
    {
        wall = std::chrono::steady_clock::now();
        cpu = cpu_now();
    }
    measurement stop(long queries) const
    {
        measurement m;
        m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
        m.cpu_seconds = cpu_now() - cpu;
        m.queries = queries;
        return m;
    }
};

template <class F>
measurement timed(long queries, F&& body)
{
    stopwatch sw;
    sw.start();
    body();
    return sw.stop(queries);
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

// ---- W1: one connection, sequential SELECT 1 ----

// W1 with libpq's synchronous API: the floor any client library is measured against.
// PQexecParams uses the same extended protocol (Parse/Bind/Execute, unnamed statement) as
// pgco, so both ask the server for the same work.
measurement w1_libpq(const std::string& conninfo, long queries)
{
    PGconn* conn = libpq_connect(conninfo);
    auto m = timed(queries, [&] {
        for (long i = 0; i < queries; ++i) {
            PGresult* r = PQexecParams(conn, "SELECT 1", 0, nullptr, nullptr, nullptr, nullptr, 0);
            if (PQresultStatus(r) != PGRES_TUPLES_OK || PQgetvalue(r, 0, 0)[0] != '1')
                throw std::runtime_error(std::string("libpq query: ") + PQerrorMessage(conn));
            PQclear(r);
        }
    });
    PQfinish(conn);
    return m;
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
            sw.start();
            for (long i = 0; i < queries; ++i) {
                if (co_await c.query_one<int>("SELECT 1") != 1)
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

// ---- W2: 10 connections, 64 tasks, random point selects ----

constexpr int w2_rows = 100000;
constexpr std::size_t w2_connections = 10;
constexpr int w2_tasks = 64;
constexpr const char* w2_sql = "SELECT v FROM kv WHERE id = $1";

/// Creates and fills `kv` if it is missing or incomplete.
void w2_prepare(const std::string& conninfo)
{
    PGconn* conn = libpq_connect(conninfo);
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr); // "kv already exists"
    auto run = [&](const char* sql) {
        PGresult* r = PQexec(conn, sql);
        auto st = PQresultStatus(r);
        bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        std::string msg = ok ? "" : std::string(PQerrorMessage(conn));
        PQclear(r);
        if (!ok) {
            PQfinish(conn);
            throw std::runtime_error(std::string("W2 setup (") + sql + "): " + msg);
        }
    };
    run("CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v text)");
    run("INSERT INTO kv (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100000) g "
        "ON CONFLICT DO NOTHING");
    run("ANALYZE kv");
    PQfinish(conn);
}

/// The ids both drivers query, in order: the i-th query of a run asks for `ids[i]`. A fixed
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

measurement w2_libpq(const std::string& conninfo, const std::vector<int>& ids)
{
    const long queries = static_cast<long>(ids.size());
    std::vector<PGconn*> conns;
    try {
        for (std::size_t i = 0; i < w2_connections; ++i)
            conns.push_back(libpq_connect(conninfo));
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
            const Oid types[1] = {23}; // int4, as pgco binds an int
            char buf[16];
            const char* values[1] = {buf};
            for (;;) {
                long i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= queries)
                    break;
                std::snprintf(buf, sizeof buf, "%d", ids[static_cast<std::size_t>(i)]);
                PGresult* r = PQexecParams(conn, w2_sql, 1, types, values, nullptr, nullptr, 0);
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

measurement w2_pgco(pgco::pool_options opts, const std::vector<int>& ids)
{
    const long queries = static_cast<long>(ids.size());
    opts.connection_limit = w2_connections;
    asio::io_context io(1);
    pgco::pool pool(io.get_executor(), opts);
    measurement m;
    std::exception_ptr failure;
    long next = 0;
    int live = 0;
    stopwatch sw;

    auto worker = [&]() -> asio::awaitable<void> {
        while (next < queries) {
            int id = ids[static_cast<std::size_t>(next++)];
            auto v = co_await pool.query_one<std::string>(w2_sql, id);
            if (!w2_value_ok(v.size()))
                throw std::runtime_error("pgco W2 returned a wrong value: " + v);
        }
    };
    auto finish = [&] {
        if (--live == 0) {
            m = sw.stop(queries);
            asio::co_spawn(io, pool.close(std::chrono::seconds(5)), asio::detached);
        }
    };

    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            // Open all ten connections before the clock starts, as the libpq driver does.
            {
                std::vector<pgco::pooled_connection> held;
                for (std::size_t i = 0; i < w2_connections; ++i)
                    held.push_back(co_await pool.acquire());
            }
            live = w2_tasks;
            sw.start();
            for (int t = 0; t < w2_tasks; ++t)
                asio::co_spawn(io, worker(), [&](std::exception_ptr e) {
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
    if (st.connections_opened != w2_connections || st.acquire_timeouts != 0)
        std::fprintf(stderr,
                     "W2 pgco: unexpected pool stats: opened %llu connections, %llu timeouts\n",
                     static_cast<unsigned long long>(st.connections_opened),
                     static_cast<unsigned long long>(st.acquire_timeouts));
    return m;
}

// ---- output ----

void print(const char* workload, const char* driver, const measurement& m, const char* stat,
           int run)
{
    std::printf("{\"workload\":\"%s\",\"driver\":\"%s\",\"stat\":\"%s\",\"run\":%d,"
                "\"queries\":%ld,\"seconds\":%.4f,\"qps\":%.0f,\"cpu_us_per_query\":%.3f}\n",
                workload, driver, stat, run, m.queries, m.seconds, m.queries / m.seconds,
                m.cpu_seconds * 1e6 / static_cast<double>(m.queries));
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
    return m;
}

/// Runs both drivers `repeat` times, alternating, after one unmeasured warm-up of each; prints
/// every run, the medians and the ratios.
template <class Libpq, class Pgco, class WarmLibpq, class WarmPgco>
void compare(const char* workload, int repeat, Libpq libpq, Pgco pgco, WarmLibpq warm_libpq,
             WarmPgco warm_pgco)
{
    std::map<std::string, std::vector<measurement>> runs;
    // One unmeasured warm-up of each, so both find a warm server and warm caches.
    warm_libpq();
    warm_pgco();
    for (int r = 0; r < repeat; ++r) {
        runs["libpq"].push_back(libpq());
        print(workload, "libpq", runs["libpq"].back(), "run", r + 1);
        runs["pgco"].push_back(pgco());
        print(workload, "pgco", runs["pgco"].back(), "run", r + 1);
    }
    auto base = median(runs["libpq"]);
    auto ours = median(runs["pgco"]);
    print(workload, "libpq", base, "median", 0);
    print(workload, "pgco", ours, "median", 0);
    std::printf("{\"workload\":\"%s\",\"stat\":\"ratio\",\"baseline\":\"libpq\","
                "\"qps_ratio\":%.3f,\"cpu_ratio\":%.3f,\"repeat\":%d}\n",
                workload, base.seconds / ours.seconds, ours.cpu_seconds / base.cpu_seconds, repeat);
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv)
{
    std::string url;
    std::string workload = "all";
    long queries = 20000;
    long w2_queries = 100000;
    int repeat = 5;
    for (int i = 1; i < argc; i += 2) {
        std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "option %s needs a value\n", a.c_str());
            return 2;
        }
        if (a == "--url")
            url = argv[i + 1];
        else if (a == "--workload")
            workload = argv[i + 1];
        else if (a == "--queries")
            queries = std::atol(argv[i + 1]);
        else if (a == "--w2-queries")
            w2_queries = std::atol(argv[i + 1]);
        else if (a == "--repeat")
            repeat = std::atoi(argv[i + 1]);
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (url.empty()) {
        if (const char* env = std::getenv("DATABASE_URL"))
            url = env;
    }
    bool run_w1 = workload == "W1" || workload == "all";
    bool run_w2 = workload == "W2" || workload == "all";
    if (url.empty() || !(run_w1 || run_w2) || queries <= 0 || w2_queries <= 0 || repeat <= 0) {
        std::fprintf(stderr, "usage: pgco_bench --url URL [--workload W1|W2|all] [--queries N] "
                             "[--w2-queries N] [--repeat N]\n");
        return 2;
    }
    try {
        auto opts = pgco::pool_options::from_url(url);
        if (run_w1) {
            compare(
                "W1", repeat, [&] { return w1_libpq(opts.conninfo, queries); },
                [&] { return w1_pgco(opts, queries); },
                [&] { w1_libpq(opts.conninfo, queries / 10 + 1); },
                [&] { w1_pgco(opts, queries / 10 + 1); });
        }
        if (run_w2) {
            w2_prepare(opts.conninfo);
            auto ids = w2_ids(w2_queries);
            auto warm = w2_ids(w2_queries / 10 + 1);
            compare(
                "W2", repeat, [&] { return w2_libpq(opts.conninfo, ids); },
                [&] { return w2_pgco(opts, ids); }, [&] { w2_libpq(opts.conninfo, warm); },
                [&] { w2_pgco(opts, warm); });
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "benchmark failed: %s\n", e.what());
        return 1;
    }
}
