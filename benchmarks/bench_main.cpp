// Throughput and client CPU per query: pgco beside raw libpq, in one process and one run.
//
//   pgco_bench --url URL [--workload W1] [--queries 20000] [--repeat 5]
//
// Prints one JSON object per line: every run of every driver, then the medians and the
// pgco / libpq ratios. Drivers alternate run by run so that drift on a shared machine
// affects both alike.

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <libpq-fe.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
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

template <class F>
measurement timed(long queries, F&& body)
{
    auto wall = std::chrono::steady_clock::now();
    double cpu = cpu_now();
    body();
    measurement m;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
    m.cpu_seconds = cpu_now() - cpu;
    m.queries = queries;
    return m;
}

// W1 with libpq's synchronous API: the floor any client library is measured against.
// PQexecParams uses the same extended protocol (Parse/Bind/Execute, unnamed statement) as
// pgco, so both ask the server for the same work.
measurement w1_libpq(const std::string& conninfo, long queries)
{
    PGconn* conn = PQconnectdb(conninfo.c_str());
    if (PQstatus(conn) != CONNECTION_OK)
        throw std::runtime_error(std::string("libpq connect: ") + PQerrorMessage(conn));
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
            auto wall = std::chrono::steady_clock::now();
            double cpu = cpu_now();
            for (long i = 0; i < queries; ++i) {
                if (co_await c.query_one<int>("SELECT 1") != 1)
                    throw std::runtime_error("pgco returned a wrong value");
            }
            m.seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
            m.cpu_seconds = cpu_now() - cpu;
            m.queries = queries;
        },
        [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
    return m;
}

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

} // namespace

int main(int argc, char** argv)
{
    std::string url;
    std::string workload = "W1";
    long queries = 20000;
    int repeat = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--url")
            url = argv[i + 1];
        else if (a == "--workload")
            workload = argv[i + 1];
        else if (a == "--queries")
            queries = std::atol(argv[i + 1]);
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
    if (url.empty() || workload != "W1" || queries <= 0 || repeat <= 0) {
        std::fprintf(stderr, "usage: pgco_bench --url URL [--workload W1] [--queries N] "
                             "[--repeat N]\n");
        return 2;
    }
    try {
        auto opts = pgco::pool_options::from_url(url);
        std::map<std::string, std::vector<measurement>> runs;
        // One unmeasured warm-up of each, so both find a warm server and warm caches.
        w1_libpq(opts.conninfo, queries / 10);
        w1_pgco(opts, queries / 10);
        for (int r = 0; r < repeat; ++r) {
            runs["libpq"].push_back(w1_libpq(opts.conninfo, queries));
            print("W1", "libpq", runs["libpq"].back(), "run", r + 1);
            runs["pgco"].push_back(w1_pgco(opts, queries));
            print("W1", "pgco", runs["pgco"].back(), "run", r + 1);
        }
        auto base = median(runs["libpq"]);
        auto ours = median(runs["pgco"]);
        print("W1", "libpq", base, "median", 0);
        print("W1", "pgco", ours, "median", 0);
        std::printf("{\"workload\":\"W1\",\"stat\":\"ratio\",\"baseline\":\"libpq\","
                    "\"qps_ratio\":%.3f,\"cpu_ratio\":%.3f,\"repeat\":%d}\n",
                    base.seconds / ours.seconds, ours.cpu_seconds / base.cpu_seconds, repeat);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "benchmark failed: %s\n", e.what());
        return 1;
    }
}
