// Cost of borrowing a pooled connection and giving it back, with Google Benchmark.
//
//   DATABASE_URL=postgresql://... bench_acquire [--benchmark_format=json] [...]
//
// Needs a real server (the pool opens real connections), but no query runs inside the timed
// loops: they measure `co_await pool.acquire()` plus the handle's destruction only.
//
// - acquire_uncontended: one coroutine, connection_limit=1, the connection already idle. The
//   loop never suspends, so handlers the pool posts (the idle watch it cancels on every
//   acquire) run only after the timed loop; the counter `deferred_handlers` is how many were
//   left per iteration.
// - acquire_uncontended_yield: the same plus one `co_await post(...)` per iteration, so those
//   handlers run inside the timed loop; `post_yield_only` is that yield alone, to subtract.
// - acquire_contended/limit/waiters/timeout: `waiters` coroutines share the iterations and
//   contend for `limit` connections; each holds its connection across one `post` (so the
//   others really queue up) and the time is per acquire/hold/release, `post_yield_only`
//   included. timeout=1 keeps the default pool_timeout (20 s: every wait races a timer),
//   timeout=0 waits without a deadline.

#include <pgco/pgco.hpp>

#include <benchmark/benchmark.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace asio = boost::asio;

namespace {

std::string g_url;

/// A pool on its own single-threaded io_context, with `limit` connections opened and idle.
struct pool_fixture
{
    asio::io_context io{1};
    pgco::pool pool;

    pool_fixture(std::size_t limit, bool with_timeout)
        : pool(io.get_executor(), options(limit, with_timeout))
    {
        run([this]() -> asio::awaitable<void> {
            std::vector<pgco::pooled_connection> held;
            for (std::size_t i = 0; i < pool.options().connection_limit; ++i)
                held.push_back(co_await pool.acquire());
        });
    }

    ~pool_fixture()
    {
        asio::co_spawn(io, pool.close(std::chrono::seconds(5)), asio::detached);
        io.restart();
        io.run();
    }

    static pgco::pool_options options(std::size_t limit, bool with_timeout)
    {
        auto o = pgco::pool_options::from_url(g_url);
        o.connection_limit = limit;
        if (!with_timeout)
            o.pool_timeout = std::chrono::milliseconds(0);
        return o;
    }

    /// Runs the io_context until the coroutine made by `make` has finished (the pool's monitor
    /// keeps the context busy, so `run()` alone would not return). Rethrows its exception.
    /// `stop_early`, if given, also ends the run as soon as it is set (by the coroutine).
    template <class Make>
    void run(Make make, const bool* stop_early = nullptr)
    {
        // Shared: after an early stop the completion runs later, when this frame is gone.
        struct outcome
        {
            bool done = false;
            std::exception_ptr failure;
        };
        auto out = std::make_shared<outcome>();
        asio::co_spawn(io, make(), [out](std::exception_ptr e) {
            out->failure = e;
            out->done = true;
        });
        io.restart();
        while (!out->done && !(stop_early && *stop_early))
            io.run_one();
        if (out->failure)
            std::rethrow_exception(out->failure);
    }

    void check(benchmark::State& state)
    {
        auto st = pool.stats();
        if (st.connections_opened != pool.options().connection_limit || st.acquire_timeouts != 0 ||
            st.connections_closed != 0)
            state.SkipWithError("the pool opened, closed or timed out unexpectedly");
    }
};

void acquire_uncontended(benchmark::State& state)
{
    try {
        pool_fixture f(1, true);
        bool loop_done = false;
        f.run(
            [&]() -> asio::awaitable<void> {
                for (auto _ : state) {
                    auto c = co_await f.pool.acquire();
                    benchmark::DoNotOptimize(c);
                }
                loop_done = true;
            },
            &loop_done);
        // Handlers the loop left behind, ready to run (the coroutine's own completion among
        // them).
        f.io.restart();
        auto left = f.io.poll();
        if (left > 0)
            --left;
        state.counters["deferred_handlers"] =
            benchmark::Counter(static_cast<double>(left) / static_cast<double>(state.iterations()));
        f.check(state);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void acquire_uncontended_yield(benchmark::State& state)
{
    try {
        pool_fixture f(1, true);
        f.run([&]() -> asio::awaitable<void> {
            for (auto _ : state) {
                {
                    auto c = co_await f.pool.acquire();
                    benchmark::DoNotOptimize(c);
                }
                co_await asio::post(f.io, asio::use_awaitable);
            }
        });
        f.check(state);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void post_yield_only(benchmark::State& state)
{
    asio::io_context io(1);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            for (auto _ : state)
                co_await asio::post(io, asio::use_awaitable);
        },
        asio::detached);
    io.run();
}

void acquire_contended(benchmark::State& state)
{
    const auto limit = static_cast<std::size_t>(state.range(0));
    const auto waiters = static_cast<int>(state.range(1));
    const bool with_timeout = state.range(2) != 0;
    try {
        pool_fixture f(limit, with_timeout);
        const benchmark::IterationCount total = state.max_iterations;
        while (state.KeepRunningBatch(total)) {
            benchmark::IterationCount next = 0;
            int live = waiters;
            std::exception_ptr failure;
            auto worker = [&]() -> asio::awaitable<void> {
                while (next < total) {
                    ++next;
                    auto c = co_await f.pool.acquire();
                    benchmark::DoNotOptimize(c);
                    // Hold it across one turn of the event loop, so the other coroutines run
                    // and queue up in acquire (without this the first coroutine would do every
                    // iteration alone, never suspending).
                    co_await asio::post(f.io, asio::use_awaitable);
                }
            };
            for (int w = 0; w < waiters; ++w)
                asio::co_spawn(f.io, worker(), [&](std::exception_ptr e) {
                    if (e && !failure) {
                        failure = e;
                        next = total;
                    }
                    --live;
                });
            f.io.restart();
            while (live > 0)
                f.io.run_one();
            if (failure)
                std::rethrow_exception(failure);
        }
        f.check(state);
        auto st = f.pool.stats();
        state.counters["wait_p50_us"] = static_cast<double>(st.acquire_wait_p50.count());
        state.counters["wait_p99_us"] = static_cast<double>(st.acquire_wait_p99.count());
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

BENCHMARK(acquire_uncontended);
BENCHMARK(acquire_uncontended_yield);
BENCHMARK(post_yield_only);
BENCHMARK(acquire_contended)
    ->ArgNames({"limit", "waiters", "timeout"})
    ->Args({1, 64, 1})
    ->Args({10, 64, 1})
    ->Args({1, 64, 0})
    ->Args({10, 64, 0});

int main(int argc, char** argv)
{
    const char* url = std::getenv("DATABASE_URL");
    if (!url || !*url) {
        std::fprintf(stderr, "bench_acquire: DATABASE_URL is not set; it needs a running "
                             "PostgreSQL server, e.g.\n"
                             "  DATABASE_URL=postgresql://user:password@127.0.0.1:5432/db "
                             "bench_acquire\n");
        return 1;
    }
    g_url = url;
    // Fail early and clearly if the server cannot be reached.
    try {
        asio::io_context io(1);
        std::exception_ptr failure;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                pgco::connection c(io.get_executor());
                auto o = pgco::pool_options::from_url(g_url);
                o.connect_timeout = std::chrono::seconds(5);
                co_await c.connect(o);
            },
            [&](std::exception_ptr e) { failure = e; });
        io.run();
        if (failure)
            std::rethrow_exception(failure);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_acquire: cannot connect to DATABASE_URL: %s\n", e.what());
        return 1;
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
