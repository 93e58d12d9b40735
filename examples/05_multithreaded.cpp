// One io_context run by 4 threads, one pool shared by 64 coroutines, no strands.
//
// pgco's pool is thread-safe, so coroutines on any thread may call it at once. Each coroutine
// runs its statements one after another, so the connection it borrows for a statement is
// only ever used by one coroutine at a time: nothing else needs a lock or a strand. Shared
// totals are atomics.
//
//   DATABASE_URL=postgresql://user:password@localhost/db ./pgco_example_05_multithreaded [--check]
//
// --check makes the program exit non-zero unless every query succeeded.

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;

constexpr int threads = 4;
constexpr int coroutines = 64;
constexpr int queries_each = 25;

struct totals
{
    std::atomic<long> ok{0};
    std::atomic<long> wrong{0};
    std::atomic<long> failed{0};
    std::mutex m; // guards the two fields below; only for the report
    std::set<std::thread::id> threads_seen;
    std::string first_error;
};

asio::awaitable<void> worker(pgco::pool& db, int id, totals& t)
{
    for (int i = 0; i < queries_each; ++i) {
        const std::int64_t n = std::int64_t{id} * 1000 + i;
        try {
            auto r = co_await db.query_one<std::int64_t>("SELECT $1::int8 * 2", n);
            (r == 2 * n ? t.ok : t.wrong)++;
        } catch (const std::exception& e) {
            t.failed++;
            std::lock_guard lock(t.m);
            if (t.first_error.empty())
                t.first_error = e.what();
        }
        // Which thread resumed this coroutine: work spreads over the io_context's threads.
        std::lock_guard lock(t.m);
        t.threads_seen.insert(std::this_thread::get_id());
    }
}

asio::awaitable<void> demo(totals& t)
{
    auto ex = co_await asio::this_coro::executor;
    pgco::pool db(ex, pgco::pool_options::from_env("DATABASE_URL"));

    auto start = std::chrono::steady_clock::now();
    using op_type = decltype(asio::co_spawn(ex, worker(db, 0, t), asio::deferred));
    std::vector<op_type> ops;
    for (int i = 0; i < coroutines; ++i)
        ops.push_back(asio::co_spawn(ex, worker(db, i, t), asio::deferred));
    // Waits for all 64; they run in parallel on whichever threads are free.
    auto [order, errors] = co_await asio::experimental::make_parallel_group(std::move(ops))
                               .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start)
                  .count();
    for (auto& e : errors)
        if (e)
            std::rethrow_exception(e);

    auto st = db.stats();
    std::printf("%d coroutines x %d queries on %d threads: %ld succeeded, %ld wrong, %ld failed "
                "in %lld ms; %zu thread(s) resumed them; %llu connection(s) opened (limit %zu)\n",
                coroutines, queries_each, threads, t.ok.load(), t.wrong.load(), t.failed.load(),
                static_cast<long long>(ms), t.threads_seen.size(),
                static_cast<unsigned long long>(st.connections_opened),
                db.options().connection_limit);
    if (!t.first_error.empty())
        std::printf("first error: %s\n", t.first_error.c_str());
    co_await db.close(); // then the io_context runs out of work and every thread returns
}

int main(int argc, char** argv)
{
    bool check = argc > 1 && !std::strcmp(argv[1], "--check");
    asio::io_context io(threads);
    totals t;
    bool crashed = false;
    asio::co_spawn(io, demo(t), [&](std::exception_ptr e) {
        if (!e)
            return;
        crashed = true;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            std::fprintf(stderr, "error: %s\n", ex.what());
        }
    });
    std::vector<std::thread> pool_threads;
    for (int i = 1; i < threads; ++i)
        pool_threads.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& th : pool_threads)
        th.join();

    if (crashed)
        return 1;
    if (check) {
        const long expected = long{coroutines} * queries_each;
        if (t.ok != expected || t.wrong != 0 || t.failed != 0) {
            std::printf("CHECK FAILED: expected %ld correct answers\n", expected);
            return 1;
        }
        std::printf("multithreaded check passed\n");
    }
    return 0;
}
