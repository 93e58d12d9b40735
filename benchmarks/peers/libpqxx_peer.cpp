// W1/W2/W3 of pgco_bench with libpqxx (Debian libpqxx-dev 6.4), the C++ wrapper of libpq.
//
//   libpqxx_peer [--url URL] [--workload W1,W2,W3] [--queries N] [--w2-queries N]
//                [--w3-queries N] [--repeat N]
//
// Statements run in a pqxx::nontransaction (no BEGIN/COMMIT around each query).
// W1: one connection, a statement prepared before the clock, `tx.exec_prepared("w1")` in a
//     loop (PQexecPrepared underneath).
// W2: 10 threads with one connection each (as pgco_bench's libpq W2), each with
//     `SELECT v FROM kv WHERE id = $1` prepared, `tx.exec_prepared("w2", id)`; the ids are
//     shared through an atomic counter.
// W3: pqxx::pipeline on one connection. libpqxx 6 pipelines by joining the queued queries into
//     one multi-statement string sent with the simple query protocol, so a pipelined query
//     takes no parameters: each is the text `SELECT <v>::int` (the server parses and plans
//     every one). retain(100) sends them in batches of 100 (like pgco_bench's one Sync per
//     100); results are retrieved in order, at most 256 behind.
// Every workload: one unmeasured warm-up of a tenth of the count, then --repeat runs (default
// 3); prints every run and the median (wall and client CPU separately) as JSON lines.

#include <pqxx/pqxx>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr const char* driver_name = "libpqxx";
constexpr int w2_rows = 100000;
constexpr int w2_connections = 10;
constexpr long w3_window = 256;
constexpr int w3_retain = 100;

struct measurement
{
    double seconds = 0;
    double cpu = 0;
    long queries = 0;
};

double cpu_now()
{
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct stopwatch
{
    std::chrono::steady_clock::time_point wall = std::chrono::steady_clock::now();
    double cpu = cpu_now();
    measurement stop(long queries) const
    {
        return {std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count(),
                cpu_now() - cpu, queries};
    }
};

void print(const char* workload, const measurement& m, const char* stat, int run,
           const char* extra = "")
{
    std::printf("{\"workload\":\"%s\",\"driver\":\"%s\",\"stat\":\"%s\",\"run\":%d,"
                "\"queries\":%ld,\"seconds\":%.4f,\"qps\":%.0f,\"cpu_us_per_query\":%.3f%s}\n",
                workload, driver_name, stat, run, m.queries, m.seconds, m.queries / m.seconds,
                m.cpu * 1e6 / static_cast<double>(m.queries), extra);
    std::fflush(stdout);
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

void run_workload(const char* workload, long count, int repeat,
                  const std::function<measurement(long)>& once, const char* extra = "")
{
    once(count / 10 + 1);
    std::vector<double> secs, cpus;
    for (int r = 0; r < repeat; ++r) {
        auto m = once(count);
        print(workload, m, "run", r + 1, extra);
        secs.push_back(m.seconds);
        cpus.push_back(m.cpu);
    }
    print(workload, {median(secs), median(cpus), count}, "median", 0, extra);
}

measurement w1(const std::string& url, long n)
{
    pqxx::connection conn(url);
    conn.prepare("w1", "SELECT 1");
    pqxx::nontransaction tx(conn);
    if (tx.exec_prepared("w1")[0][0].as<int>() != 1) // prepares before the clock
        throw std::runtime_error("libpqxx W1: wrong value");
    stopwatch sw;
    for (long i = 0; i < n; ++i) {
        pqxx::result r = tx.exec_prepared("w1");
        if (r[0][0].as<int>() != 1)
            throw std::runtime_error("libpqxx W1: wrong value");
    }
    return sw.stop(n);
}

void kv_setup(const std::string& url)
{
    pqxx::connection conn(url);
    pqxx::nontransaction tx(conn);
    tx.exec("CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v text)");
    tx.exec("INSERT INTO kv (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100000) g "
            "ON CONFLICT DO NOTHING");
    tx.exec("ANALYZE kv");
    auto shape = tx.exec("SELECT count(*) || ',' || min(id) || ',' || max(id) || ',' || "
                         "count(*) FILTER (WHERE length(v) = 32) FROM kv")[0][0]
                     .as<std::string>();
    if (shape != "100000,1,100000,100000")
        throw std::runtime_error(
            "W2 setup: table kv is not ids 1..100000 (count,min,max,ok: " + shape + ")");
}

std::vector<int> w2_ids(long n)
{
    std::mt19937_64 rng(0x5eed'2024); // the same sequence as pgco_bench
    std::uniform_int_distribution<int> dist(1, w2_rows);
    std::vector<int> ids(static_cast<std::size_t>(n));
    for (auto& id : ids)
        id = dist(rng);
    return ids;
}

measurement w2(const std::string& url, const std::vector<int>& ids)
{
    const long n = static_cast<long>(ids.size());
    std::vector<std::unique_ptr<pqxx::connection>> conns;
    for (int i = 0; i < w2_connections; ++i) {
        conns.push_back(std::make_unique<pqxx::connection>(url));
        conns.back()->prepare("w2", "SELECT v FROM kv WHERE id = $1");
        pqxx::nontransaction tx(*conns.back());
        tx.exec_prepared("w2", 1); // prepares before the clock
    }
    std::atomic<long> next{0};
    std::mutex mu;
    std::string failure;
    auto worker = [&](pqxx::connection* conn) {
        try {
            pqxx::nontransaction tx(*conn);
            for (;;) {
                long i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= n)
                    break;
                pqxx::result r = tx.exec_prepared("w2", ids[static_cast<std::size_t>(i)]);
                if (r.size() != 1 || r[0][0].size() != 32)
                    throw std::runtime_error("libpqxx W2: wrong value");
            }
        } catch (const std::exception& e) {
            next.store(n);
            std::lock_guard lock(mu);
            if (failure.empty())
                failure = e.what();
        }
    };
    stopwatch sw;
    {
        std::vector<std::thread> threads;
        for (auto& c : conns)
            threads.emplace_back(worker, c.get());
        for (auto& t : threads)
            t.join();
    }
    auto m = sw.stop(n);
    if (!failure.empty())
        throw std::runtime_error(failure);
    return m;
}

int w3_value(long i)
{
    return static_cast<int>(i % 1000000000);
}

measurement w3(const std::string& url, long n)
{
    pqxx::connection conn(url);
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT 0::int");
    stopwatch sw;
    {
        pqxx::pipeline p(tx);
        p.retain(w3_retain);
        std::deque<std::pair<pqxx::pipeline::query_id, int>> pending;
        auto take = [&] {
            auto [id, v] = pending.front();
            pending.pop_front();
            pqxx::result r = p.retrieve(id);
            int got = r[0][0].as<int>();
            if (got != v)
                throw std::runtime_error("libpqxx W3: " + std::to_string(got) + " for " +
                                         std::to_string(v));
        };
        for (long i = 0; i < n; ++i) {
            int v = w3_value(i);
            pending.emplace_back(p.insert("SELECT " + std::to_string(v) + "::int"), v);
            if (static_cast<long>(pending.size()) >= w3_window)
                take();
        }
        p.complete();
        while (!pending.empty())
            take();
    }
    return sw.stop(n);
}

[[noreturn]] void usage(const std::string& msg)
{
    std::fprintf(stderr,
                 "libpqxx_peer: %s\nusage: libpqxx_peer [--url URL] [--workload W1,W2,W3] "
                 "[--queries N] [--w2-queries N] [--w3-queries N] [--repeat N]\n",
                 msg.c_str());
    std::exit(2);
}

} // namespace

int main(int argc, char** argv)
{
    std::string url = std::getenv("DATABASE_URL") ? std::getenv("DATABASE_URL") : "";
    std::string workloads = "W1,W2,W3";
    long queries = 20000, w2_queries = 100000, w3_queries = 200000;
    int repeat = 3;
    for (int i = 1; i < argc; i += 2) {
        std::string k = argv[i];
        if (i + 1 >= argc)
            usage("option " + k + " needs a value");
        std::string v = argv[i + 1];
        if (k == "--url")
            url = v;
        else if (k == "--workload")
            workloads = v;
        else if (k == "--queries")
            queries = std::atol(v.c_str());
        else if (k == "--w2-queries")
            w2_queries = std::atol(v.c_str());
        else if (k == "--w3-queries")
            w3_queries = std::atol(v.c_str());
        else if (k == "--repeat")
            repeat = std::atoi(v.c_str());
        else
            usage("unknown option " + k);
    }
    if (url.empty())
        usage("--url or DATABASE_URL is required");
    if (queries <= 0 || w2_queries <= 0 || w3_queries <= 0 || repeat <= 0)
        usage("counts must be positive");
    std::vector<std::string> list;
    std::stringstream in(workloads);
    for (std::string w; std::getline(in, w, ',');) {
        if (w != "W1" && w != "W2" && w != "W3")
            usage("unknown workload " + w);
        list.push_back(w);
    }
    auto has = [&](const char* w) { return std::find(list.begin(), list.end(), w) != list.end(); };
    try {
        if (has("W1"))
            run_workload("W1", queries, repeat, [&](long n) { return w1(url, n); });
        if (has("W2")) {
            kv_setup(url);
            run_workload("W2", w2_queries, repeat, [&](long n) { return w2(url, w2_ids(n)); });
        }
        if (has("W3"))
            run_workload(
                "W3", w3_queries, repeat, [&](long n) { return w3(url, n); },
                ",\"in_flight\":256,\"batch\":100");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "libpqxx_peer failed: %s\n", e.what());
        return 1;
    }
}
