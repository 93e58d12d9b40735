// A pool shared by many coroutines: at most connection_limit connections, waiting callers
// served in order, graceful shutdown on SIGINT/SIGTERM or at the end.
//
//   DATABASE_URL='postgresql://user:password@localhost/db?connection_limit=5'
//   ./pgco_example_02_pool

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdio>
#include <exception>

namespace asio = boost::asio;

asio::awaitable<void> worker(pgco::pool& db, int id, int& done)
{
    // Each call borrows a connection for one statement and gives it back at once.
    auto square = co_await db.query_one<std::int64_t>("SELECT $1::int8 * $1::int8", id);
    if (square != std::int64_t{id} * id)
        throw std::runtime_error("wrong answer");
    ++done;
}

asio::awaitable<void> demo()
{
    auto ex = co_await asio::this_coro::executor;
    pgco::pool db(ex, pgco::pool_options::from_env("DATABASE_URL"));
    db.close_on_signals(); // Ctrl-C drains in-flight work, then closes every connection

    int done = 0;
    constexpr int tasks = 100;
    for (int i = 1; i <= tasks; ++i)
        asio::co_spawn(ex, worker(db, i, done), asio::detached);
    asio::steady_timer tick(ex);
    while (done < tasks && !db.is_closed()) {
        tick.expires_after(std::chrono::milliseconds(5));
        co_await tick.async_wait(asio::use_awaitable);
    }

    auto st = db.stats();
    std::printf("%d tasks done over %zu connection(s) (limit %zu); acquire wait p50 %lld us, "
                "p99 %lld us\n",
                done, st.open, db.options().connection_limit,
                static_cast<long long>(st.acquire_wait_p50.count()),
                static_cast<long long>(st.acquire_wait_p99.count()));
    co_await db.close();
}

int main()
{
    asio::io_context io;
    int status = 0;
    asio::co_spawn(io, demo(), [&](std::exception_ptr e) {
        if (!e)
            return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            std::fprintf(stderr, "error: %s\n", ex.what());
            status = 1;
        }
    });
    io.run(); // returns once the pool is closed: nothing is left running
    return status;
}
