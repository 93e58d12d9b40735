// pgco::pool against the real server started by the CTest fixture.

#include "support/fault_proxy.hpp"
#include "support/server.hpp"

#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/log.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <gtest/gtest.h>

#include <csignal>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::connected;
using pgco::test::database_url;
using pgco::test::eventually;
using pgco::test::expect_error;
using pgco::test::ms_since;
using pgco::test::run;
using pgco::test::server_port;
using pgco::test::sleep_for;
using pgco::test::url_via_port;
using pgco::test::url_via_ports;
using pgco::test::url_with;

namespace {

/// An application_name no other test (or test process running in parallel) uses.
std::string unique_app_name()
{
    static std::atomic<int> counter{0};
    return "pool_test_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
}

/// Waits until the server process `pid` has left pg_stat_activity (at most `limit`).
awaitable<bool> backend_gone(pgco::connection& admin, int pid, std::chrono::milliseconds limit)
{
    auto deadline = clock_type::now() + limit;
    for (;;) {
        auto n = co_await admin.query_one<std::int64_t>(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid);
        if (n == 0)
            co_return true;
        if (clock_type::now() >= deadline)
            co_return false;
        co_await sleep_for(10ms);
    }
}

/// A port on 127.0.0.1 where nothing listens (it was free a moment ago).
unsigned short closed_port(const asio::any_io_executor& ex)
{
    asio::ip::tcp::acceptor a(ex, {asio::ip::make_address("127.0.0.1"), 0});
    return a.local_endpoint().port();
}

std::string closed_port_url(unsigned short port, const std::string& params)
{
    return "postgresql://u:secret@127.0.0.1:" + std::to_string(port) + "/db?" + params;
}

bool contains(const std::string& text, std::string_view part)
{
    return text.find(part) != std::string::npos;
}

/// Runs `body` on an io_context driven by `threads` threads. `body` itself runs on a strand
/// (plain connections such as an admin connection must stay on one strand); it gets the
/// io_context's own executor for the pool and the tasks that share it. Fails the test if
/// `body` does not finish within `limit`, or if the io_context does not run out of work by
/// itself shortly after it (the pool's background work must stop once it is closed and
/// destroyed); in both cases the io_context is stopped so the test stays bounded.
void run_threaded(const std::function<awaitable<void>(asio::any_io_executor)>& body, int threads,
                  std::chrono::milliseconds limit)
{
    asio::io_context io(threads);
    std::atomic<bool> finished{false};
    std::exception_ptr failure;
    asio::co_spawn(asio::make_strand(io), body(io.get_executor()), [&](std::exception_ptr e) {
        failure = e;
        finished.store(true);
    });
    std::atomic<int> exited{0};
    std::vector<std::thread> runners;
    for (int i = 0; i < threads; ++i)
        runners.emplace_back([&] {
            io.run();
            ++exited;
        });
    auto deadline = clock_type::now() + limit;
    while (!finished.load() && clock_type::now() < deadline)
        std::this_thread::sleep_for(5ms);
    bool body_finished = finished.load();
    auto grace = clock_type::now() + 2s;
    while (body_finished && exited.load() < threads && clock_type::now() < grace)
        std::this_thread::sleep_for(5ms);
    bool had_to_stop = exited.load() < threads;
    if (had_to_stop)
        io.stop();
    for (auto& t : runners)
        t.join();
    ASSERT_TRUE(body_finished) << "the coroutine did not finish within " << limit.count() << " ms";
    EXPECT_FALSE(had_to_stop) << "the io_context still had work 2 s after the test body ended";
    if (failure)
        std::rethrow_exception(failure);
}

/// 200 tasks share a pool of 10 connections while an admin connection counts the pool's
/// sessions on the server. The pool and the tasks run on `ex`, which may be an io_context run
/// by several threads; the admin connection stays on the caller's executor.
awaitable<void> many_tasks_share_ten_connections(asio::any_io_executor ex)
{
    constexpr int tasks = 200;
    auto app = unique_app_name();
    auto p = std::make_shared<pgco::pool>(
        ex, pgco::pool_options::from_url(
                url_with("connection_limit=10&pool_timeout=10&application_name=" + app)));
    auto admin = co_await connected();

    struct counters
    {
        std::atomic<int> finished{0};
        std::atomic<int> correct{0};
        std::atomic<int> failed{0};
    };
    auto count = std::make_shared<counters>();
    for (int i = 0; i < tasks; ++i)
        asio::co_spawn(
            ex,
            [p, count, i]() -> awaitable<void> {
                try {
                    auto c = co_await p->acquire();
                    co_await c->execute("SELECT pg_sleep(0.01)");
                    auto v = co_await c->query_one<int>("SELECT $1::int4 + 1", i);
                    if (v == i + 1)
                        ++count->correct;
                } catch (const std::exception& e) {
                    if (count->failed++ == 0)
                        ADD_FAILURE() << "task " << i << " failed: " << e.what();
                }
                ++count->finished;
            },
            asio::detached);

    std::int64_t max_seen = 0;
    int samples = 0;
    auto deadline = clock_type::now() + 15s;
    while (count->finished.load() < tasks && clock_type::now() < deadline) {
        auto n = co_await admin.query_one<std::int64_t>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app);
        max_seen = std::max(max_seen, n);
        ++samples;
        co_await sleep_for(5ms);
    }

    EXPECT_EQ(count->finished.load(), tasks);
    EXPECT_EQ(count->correct.load(), tasks);
    EXPECT_EQ(count->failed.load(), 0);
    EXPECT_GT(samples, 0);
    EXPECT_GT(max_seen, 0) << "the sampler never saw a pool session";
    EXPECT_LE(max_seen, 10) << "more sessions than connection_limit";
    auto s = p->stats();
    EXPECT_GE(s.acquired, static_cast<std::uint64_t>(tasks));
    EXPECT_EQ(s.in_use, 0u);
    EXPECT_LE(s.open, 10u);
    EXPECT_LE(s.connections_opened, s.connections_closed + 10u);
    co_await p->close();
    EXPECT_TRUE(p->is_closed());
}

} // namespace

TEST(pool, two_hundred_tasks_never_exceed_the_connection_limit)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            co_await many_tasks_share_ten_connections(ex);
        },
        20s);
}

TEST(pool, two_hundred_tasks_on_four_threads)
{
    run_threaded(many_tasks_share_ten_connections, 4, 20s);
}

/// 200 callers, half of them on strands of their own, share two connections through
/// multiplexing on four threads. Every tenth statement of those on strands takes 2 ms and
/// races a 1 ms timer, so it is cancelled while queued or after it was sent. Every statement
/// that returns returns its own value.
awaitable<void> many_callers_multiplexed(asio::any_io_executor ex)
{
    constexpr int callers = 200, rounds = 20;
    auto p = std::make_shared<pgco::pool>(
        ex, pgco::pool_options::from_url(url_with("connection_limit=2&pool_timeout=10")));
    struct counters
    {
        std::atomic<int> finished{0}, correct{0}, wrong{0}, cancelled{0}, failed{0}, timer{0};
    };
    auto count = std::make_shared<counters>();
    for (int i = 0; i < callers; ++i) {
        auto on = i % 2 ? asio::any_io_executor(asio::make_strand(ex)) : ex;
        asio::co_spawn(
            on,
            [p, count, i]() -> awaitable<void> {
                using namespace asio::experimental::awaitable_operators;
                auto ex = co_await asio::this_coro::executor;
                for (int r = 0; r < rounds; ++r) {
                    int v = i * 1000 + r;
                    try {
                        // `||` cancels across its two branches: only on a strand is that
                        // safe with four threads (Asio's cancellation is not thread-safe).
                        if (r % 10 == 9 && i % 2) {
                            asio::steady_timer t(ex, 1ms);
                            auto q =
                                p->query_one<int>("SELECT $1::int4 + 1 FROM pg_sleep(0.002)", v);
                            auto w = t.async_wait(asio::use_awaitable);
                            auto got = co_await (std::move(q) || std::move(w));
                            if (got.index() == 0)
                                ++(std::get<0>(got) == v + 1 ? count->correct : count->wrong);
                            else
                                ++count->timer; // the statement was cancelled
                        } else {
                            int got = co_await p->query_one<int>("SELECT $1::int4 + 1", v);
                            ++(got == v + 1 ? count->correct : count->wrong);
                        }
                    } catch (const pgco::error& e) {
                        if (e.code() == pgco::errc::cancelled)
                            ++count->cancelled;
                        else if (count->failed++ == 0)
                            ADD_FAILURE() << "caller " << i << " failed: " << e.what();
                    }
                }
                ++count->finished;
            },
            asio::detached);
    }
    auto deadline = clock_type::now() + 15s;
    while (count->finished.load() < callers && clock_type::now() < deadline)
        co_await sleep_for(5ms);
    EXPECT_EQ(count->finished.load(), callers);
    EXPECT_EQ(count->wrong.load(), 0);
    EXPECT_EQ(count->failed.load(), 0);
    EXPECT_GE(count->correct.load(), callers * rounds * 19 / 20);
    EXPECT_GT(count->timer.load(), 0);
    EXPECT_EQ(count->correct.load() + count->cancelled.load() + count->timer.load() +
                  count->failed.load() + count->wrong.load(),
              callers * rounds);
    auto st = p->stats();
    EXPECT_GT(st.statements_multiplexed, 0u);
    std::printf("[mux] correct=%d timer-won=%d cancelled=%d multiplexed=%llu batches=%llu\n",
                count->correct.load(), count->timer.load(), count->cancelled.load(),
                static_cast<unsigned long long>(st.statements_multiplexed),
                static_cast<unsigned long long>(st.pipeline_batches));
    co_await p->close();
}

TEST(mux, two_hundred_callers_on_four_threads_with_strands_and_cancellations)
{
    run_threaded(many_callers_multiplexed, 4, 30s);
}

TEST(pool, exhausted_pool_times_out_with_p2024_and_says_busy)
{
    run(
        []() -> awaitable<void> {
            pgco::pool p(
                co_await asio::this_coro::executor,
                pgco::pool_options::from_url(url_with("connection_limit=2&pool_timeout=0.5")));
            auto a = co_await p.acquire();
            auto b = co_await p.acquire();
            EXPECT_EQ(p.stats().in_use, 2u);

            auto start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await p.acquire(); });
            auto elapsed = ms_since(start);
            EXPECT_EQ(e.code(), pgco::errc::pool_timeout) << e.what();
            EXPECT_TRUE(contains(e.what(), "P2024")) << e.what();
            EXPECT_TRUE(contains(e.what(), "busy")) << e.what();
            EXPECT_GE(elapsed, 450);
            EXPECT_LE(elapsed, 1500);
            EXPECT_GE(p.stats().acquire_timeouts, 1u);

            a.release();
            EXPECT_FALSE(a);
            start = clock_type::now();
            auto c = co_await p.acquire();
            EXPECT_LT(ms_since(start), 200);
            EXPECT_EQ(co_await c->query_one<int>("SELECT 3"), 3);
            c.release();
            b.release();
            co_await p.close();
        },
        10s);
}

TEST(pool, unreachable_server_times_out_and_names_the_connect_error)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto port = closed_port(ex);
            pgco::pool p(ex, pgco::pool_options::from_url(
                                 closed_port_url(port, "pool_timeout=1&connect_timeout=0.5")));
            auto start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await p.acquire(); });
            auto elapsed = ms_since(start);
            EXPECT_EQ(e.code(), pgco::errc::pool_timeout) << e.what();
            EXPECT_TRUE(contains(e.what(), "P2024")) << e.what();
            EXPECT_TRUE(contains(e.what(), "refused") || contains(e.what(), "P1001")) << e.what();
            EXPECT_FALSE(contains(e.what(), "secret")) << e.what();
            EXPECT_GE(elapsed, 900);
            EXPECT_LE(elapsed, 2000);
            auto s = p.stats();
            EXPECT_GE(s.connect_failures, 1u);
            EXPECT_EQ(s.open, 0u);
            EXPECT_EQ(s.in_use, 0u);
            co_await p.close();
        },
        10s);
}

TEST(pool, connects_beyond_max_connecting_wait_their_turn)
{
    // A silent partition holds every connect until its deadline. With max_connecting=2 a
    // third acquire starts no connect of its own although permits are free: it waits for a
    // turn and runs out of pool_timeout (P2024). The turns come back after the failures.
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::test::fault_proxy proxy("127.0.0.1", server_port());
            pgco::pool p(ex, pgco::pool_options::from_url(
                                 url_via_port(proxy.port(), "connection_limit=4&max_connecting=2&"
                                                            "pool_timeout=0.6&connect_timeout=5")));
            proxy.stall(true);
            std::vector<std::error_code> codes;
            for (int i = 0; i < 3; ++i)
                asio::co_spawn(
                    ex,
                    [&]() -> awaitable<void> {
                        try {
                            co_await p.acquire();
                            codes.push_back(std::error_code{});
                        } catch (const pgco::error& e) {
                            codes.push_back(e.code());
                        }
                    },
                    asio::detached);
            co_await sleep_for(200ms);
            EXPECT_EQ(proxy.accepted(), 2u);
            EXPECT_EQ(p.stats().connecting, 2u);
            EXPECT_TRUE(co_await eventually([&] { return codes.size() == 3; }, 3s));
            EXPECT_EQ(proxy.accepted(), 2u);
            for (auto code : codes)
                EXPECT_EQ(code, pgco::errc::pool_timeout);
            EXPECT_EQ(p.stats().connecting, 0u);

            proxy.stall(false);
            auto c1 = co_await p.acquire();
            auto c2 = co_await p.acquire();
            auto c3 = co_await p.acquire();
            EXPECT_EQ(co_await c3->query_one<int>("SELECT 3"), 3);
            EXPECT_EQ(p.stats().open, 3u);
            EXPECT_EQ(proxy.accepted(), 5u);
            c1.release();
            c2.release();
            c3.release();
            co_await p.close();
        },
        20s);
}

TEST(pool, hosts_that_never_answer_are_passed_over_within_pool_timeout)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            asio::ip::tcp::acceptor a(ex, {asio::ip::make_address("127.0.0.1"), 0});
            asio::ip::tcp::acceptor b(ex, {asio::ip::make_address("127.0.0.1"), 0});
            auto silent1 = a.local_endpoint().port(), silent2 = b.local_endpoint().port();

            // One silent host before the server: it costs connect_timeout, then the server.
            pgco::pool p(ex, pgco::pool_options::from_url(url_via_ports(
                                 {silent1, server_port()}, "connect_timeout=0.5&pool_timeout=5")));
            auto start = clock_type::now();
            EXPECT_EQ(co_await p.query_one<int>("SELECT 7"), 7);
            EXPECT_GE(ms_since(start), 490);
            EXPECT_LT(ms_since(start), 3000);
            co_await p.close();

            // Two silent hosts take 1 s, more than the pool may wait: pool_timeout ends it.
            pgco::pool q(ex, pgco::pool_options::from_url(
                                 url_via_ports({silent1, silent2, server_port()},
                                               "connect_timeout=0.5&pool_timeout=0.7")));
            start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await q.acquire(); });
            auto elapsed = ms_since(start);
            EXPECT_EQ(e.code(), pgco::errc::pool_timeout) << e.what();
            EXPECT_GE(elapsed, 650);
            EXPECT_LT(elapsed, 1500);
            // Each host's failure says which deadline ended it.
            std::string what = e.what();
            auto port = [](auto n) { return "port " + std::to_string(n) + " failed: "; };
            EXPECT_NE(what.find(port(silent1) + "no connection within 500 ms"), std::string::npos)
                << what;
            EXPECT_NE(what.find(port(silent2) + "the pool's deadline (pool_timeout) passed first"),
                      std::string::npos)
                << what;
            co_await q.close();

            // Without connect_timeout, the pool's deadline ends the attempt, and says so.
            pgco::pool r(ex, pgco::pool_options::from_url(url_via_ports(
                                 {silent1, server_port()}, "connect_timeout=0&pool_timeout=0.5")));
            e = co_await expect_error([&]() -> awaitable<void> { co_await r.acquire(); });
            EXPECT_EQ(e.code(), pgco::errc::pool_timeout) << e.what();
            what = e.what();
            EXPECT_NE(what.find(port(silent1) + "the pool's deadline (pool_timeout) passed first"),
                      std::string::npos)
                << what;
            EXPECT_EQ(what.find("within 0 ms"), std::string::npos) << what;
            co_await r.close();
        },
        20s);
}

TEST(pool, backend_killed_while_idle_is_never_handed_out)
{
    run(
        []() -> awaitable<void> {
            pgco::pool p(
                co_await asio::this_coro::executor,
                pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=5")));
            auto admin = co_await connected();
            auto pid = co_await p.query_one<int>("SELECT pg_backend_pid()");
            EXPECT_EQ(p.stats().idle, 1u);
            EXPECT_TRUE(co_await admin.query_one<bool>("SELECT pg_terminate_backend($1)", pid));
            EXPECT_TRUE(co_await backend_gone(admin, pid, 2s));
            co_await sleep_for(100ms);

            auto next = co_await p.query_one<int>("SELECT pg_backend_pid()");
            EXPECT_NE(next, pid);
            auto s = p.stats();
            EXPECT_GE(s.closed_by_server, 1u);
            EXPECT_EQ(s.query_retries, 0u);
            EXPECT_EQ(s.open, 1u);
            co_await p.close();
        },
        10s);
}

TEST(pool, health_checks_keep_good_connections_and_replace_dead_ones)
{
    run(
        []() -> awaitable<void> {
            pgco::pool p(
                co_await asio::this_coro::executor,
                pgco::pool_options::from_url(url_with(
                    "health_check_interval=0.2&health_check_timeout=1&min_idle=0&pool_timeout=5")));
            auto admin = co_await connected();
            int pid = 0;
            {
                auto c = co_await p.acquire();
                pid = co_await c->query_one<int>("SELECT pg_backend_pid()");
            }
            co_await sleep_for(1s); // about five pings on the idle connection
            EXPECT_EQ(p.stats().health_check_failures, 0u);
            EXPECT_EQ(co_await p.query_one<int>("SELECT pg_backend_pid()"), pid)
                << "a healthy idle connection was replaced";

            EXPECT_TRUE(co_await admin.query_one<bool>("SELECT pg_terminate_backend($1)", pid));
            co_await sleep_for(600ms);
            auto next = co_await p.query_one<int>("SELECT pg_backend_pid()");
            EXPECT_NE(next, pid);
            auto s = p.stats();
            EXPECT_LE(s.open, 1u);
            EXPECT_GE(s.closed_by_server + s.health_check_failures, 1u);
            co_await p.close();
        },
        10s);
}

TEST(pool, connection_left_inside_a_transaction_is_not_reused)
{
    run(
        []() -> awaitable<void> {
            pgco::pool p(
                co_await asio::this_coro::executor,
                pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=5")));
            auto admin = co_await connected();
            int pid = 0;
            {
                auto c = co_await p.acquire();
                pid = co_await c->query_one<int>("SELECT pg_backend_pid()");
                co_await c->execute("BEGIN");
                co_await c->execute("CREATE TEMP TABLE left_open (x int)");
                c.release(); // no COMMIT
            }
            auto c = co_await p.acquire();
            EXPECT_NE(co_await c->query_one<int>("SELECT pg_backend_pid()"), pid);
            // A fresh session: outside any transaction, and the uncommitted table is gone.
            EXPECT_EQ(co_await c->query_one<std::int64_t>(
                          "SELECT count(*) FROM pg_class WHERE relname = 'left_open'"),
                      0);
            c.release();
            EXPECT_TRUE(co_await backend_gone(admin, pid, 1500ms))
                << "the backend left inside a transaction is still connected";
            co_await p.close();
        },
        10s);
}

TEST(pool, close_drains_in_flight_queries_and_lets_the_io_context_finish)
{
    asio::io_context io;
    std::atomic<bool> finished{false};
    std::exception_ptr failure;
    asio::co_spawn(
        io,
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto p = std::make_shared<pgco::pool>(
                ex, pgco::pool_options::from_url(url_with("connection_limit=2&pool_timeout=5")));
            struct counters
            {
                int acquired = 0;
                int completed = 0;
                int closed = 0;
                int other = 0;
                int done = 0;
            };
            auto n = std::make_shared<counters>();
            for (int i = 0; i < 2; ++i)
                asio::co_spawn(
                    ex,
                    [p, n]() -> awaitable<void> {
                        try {
                            auto c = co_await p->acquire();
                            ++n->acquired;
                            co_await c->execute("SELECT pg_sleep(0.3)");
                            ++n->completed;
                        } catch (const std::exception& e) {
                            ++n->other;
                            ADD_FAILURE() << "in-flight query failed: " << e.what();
                        }
                        ++n->done;
                    },
                    asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return n->acquired == 2; }, 5s));
            for (int i = 0; i < 3; ++i)
                asio::co_spawn(
                    ex,
                    [p, n]() -> awaitable<void> {
                        try {
                            auto c = co_await p->acquire();
                            ADD_FAILURE() << "a waiter got a connection from a closing pool";
                        } catch (const pgco::error& e) {
                            if (e.code() == pgco::errc::pool_closed)
                                ++n->closed;
                            else {
                                ++n->other;
                                ADD_FAILURE() << "waiter: " << e.what();
                            }
                        }
                        ++n->done;
                    },
                    asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return p->stats().waiting == 3; }, 2s))
                << "waiting: " << p->stats().waiting;
            co_await sleep_for(50ms);

            auto start = clock_type::now();
            co_await p->close(std::chrono::seconds(5));
            EXPECT_LT(ms_since(start), 2000);
            EXPECT_TRUE(co_await eventually([&] { return n->done == 5; }, 2s));
            EXPECT_EQ(n->completed, 2);
            EXPECT_EQ(n->closed, 3);
            EXPECT_EQ(n->other, 0);
            EXPECT_TRUE(p->is_closed());
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await p->acquire(); });
            EXPECT_EQ(e.code(), pgco::errc::pool_closed) << e.what();
            auto s = p->stats();
            EXPECT_EQ(s.open, 0u);
            EXPECT_EQ(s.in_use, 0u);
            EXPECT_EQ(s.idle, 0u);
            EXPECT_EQ(s.waiting, 0u);
        }(),
        [&](std::exception_ptr e) {
            failure = e;
            finished = true;
        });

    std::mutex m;
    std::condition_variable cv;
    bool returned = false;
    std::atomic<bool> watchdog_fired{false};
    std::thread watchdog([&] {
        std::unique_lock lock(m);
        if (!cv.wait_for(lock, 10s, [&] { return returned; })) {
            watchdog_fired = true;
            io.stop();
        }
    });
    io.run(); // must return by itself: the pool's background work stops when it is closed
    {
        std::lock_guard lock(m);
        returned = true;
    }
    cv.notify_all();
    watchdog.join();
    EXPECT_FALSE(watchdog_fired.load())
        << "io.run() did not return within 10 s: work was left after close()";
    ASSERT_TRUE(finished.load());
    if (failure)
        std::rethrow_exception(failure);
}

TEST(pool, is_connected_tells_a_live_server_from_a_closed_port)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool live(ex, pgco::pool_options::from_url(url_with("pool_timeout=5")));
            EXPECT_TRUE(co_await live.is_connected());

            auto port = closed_port(ex);
            pgco::pool dead(ex, pgco::pool_options::from_url(
                                    closed_port_url(port, "pool_timeout=5&connect_timeout=0.5")));
            auto start = clock_type::now();
            EXPECT_FALSE(co_await dead.is_connected(500ms));
            EXPECT_LT(ms_since(start), 500 + 1000);
            co_await dead.close();
            co_await live.close();
        },
        10s);
}

TEST(pool, reconnect_replaces_connections_and_concurrent_calls_merge)
{
    using namespace asio::experimental::awaitable_operators;
    run(
        []() -> awaitable<void> {
            pgco::pool p(co_await asio::this_coro::executor,
                         pgco::pool_options::from_url(url_with("pool_timeout=5")));
            auto pid = co_await p.query_one<int>("SELECT pg_backend_pid()");
            co_await p.reconnect();
            auto next = co_await p.query_one<int>("SELECT pg_backend_pid()");
            EXPECT_NE(next, pid);
            EXPECT_EQ(p.stats().reconnects, 1u);
            co_await p.close();

            pgco::pool q(co_await asio::this_coro::executor,
                         pgco::pool_options::from_url(url_with("pool_timeout=5")));
            pid = co_await q.query_one<int>("SELECT pg_backend_pid()");
            co_await (q.reconnect() && q.reconnect());
            EXPECT_EQ(q.stats().reconnects, 1u) << "two concurrent reconnect() calls";
            EXPECT_NE(co_await q.query_one<int>("SELECT pg_backend_pid()"), pid);
            co_await q.close();
        },
        10s);
}

TEST(pool, too_many_waiters_fail_at_once_with_pool_exhausted)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto p = std::make_shared<pgco::pool>(
                ex, pgco::pool_options::from_url(
                        url_with("connection_limit=1&max_waiters=1&pool_timeout=5")));
            auto held = co_await p->acquire();
            auto waiter_got = std::make_shared<int>(0); // 0 pending, 1 served, -1 failed
            asio::co_spawn(
                ex,
                [p, waiter_got]() -> awaitable<void> {
                    try {
                        auto c = co_await p->acquire();
                        *waiter_got = 1;
                    } catch (const std::exception& e) {
                        *waiter_got = -1;
                        ADD_FAILURE() << "the one allowed waiter failed: " << e.what();
                    }
                },
                asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return p->stats().waiting == 1; }, 2s));

            auto start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await p->acquire(); });
            EXPECT_EQ(e.code(), pgco::errc::pool_exhausted) << e.what();
            EXPECT_LT(ms_since(start), 100);

            held.release();
            EXPECT_TRUE(co_await eventually([&] { return *waiter_got != 0; }, 2s));
            EXPECT_EQ(*waiter_got, 1);
            co_await p->close();
        },
        10s);
}

TEST(pool, connection_returns_when_the_holder_throws)
{
    run(
        []() -> awaitable<void> {
            pgco::pool p(co_await asio::this_coro::executor,
                         pgco::pool_options::from_url(url_with("pool_timeout=5")));
            auto borrow_and_throw = [&p]() -> awaitable<void> {
                auto c = co_await p.acquire();
                co_await c->query_one<int>("SELECT 1");
                throw std::runtime_error("boom");
            };
            bool caught = false;
            try {
                co_await borrow_and_throw();
            } catch (const std::runtime_error&) {
                caught = true;
            }
            EXPECT_TRUE(caught);
            EXPECT_TRUE(co_await eventually([&] { return p.stats().idle == 1; }, 1s));
            auto s = p.stats();
            EXPECT_EQ(s.in_use, 0u);
            EXPECT_EQ(s.idle, 1u);
            EXPECT_EQ(s.open, 1u);
            EXPECT_EQ(co_await p.query_one<int>("SELECT 2"), 2);
            co_await p.close();
        },
        10s);
}

TEST(pool, health_check_replaces_a_connection_whose_server_side_froze)
{
    // A stopped backend keeps its socket open and answers nothing: the idle watch sees no
    // change, only the ping can tell. (The test process may signal the backend: it either runs
    // as root or as the user that started the sandbox.)
    std::ostringstream log;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
    auto captured = std::make_shared<spdlog::logger>("pgco", sink);
    captured->set_level(spdlog::level::debug);
    pgco::set_logger(captured);
    int frozen = 0;
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor,
                     pgco::pool_options::from_url(url_with(
                         "connection_limit=2&health_check_interval=0.3&health_check_timeout=0.3")));
        frozen = co_await p.query_one<int>("SELECT pg_backend_pid()");
        EXPECT_EQ(::kill(frozen, SIGSTOP), 0);
        EXPECT_TRUE(co_await eventually([&] { return p.stats().health_check_failures >= 1; }, 5s));
        EXPECT_TRUE(co_await eventually([&] { return p.stats().idle == 1; }, 5s));
        auto fresh = co_await p.query_one<int>("SELECT pg_backend_pid()");
        EXPECT_NE(fresh, frozen);
        EXPECT_LE(p.stats().open, 2u);
        co_await p.close();
    });
    if (frozen > 0) {
        ::kill(frozen, SIGCONT); // it then finds its client gone and exits
    }
    pgco::set_logger(nullptr);
    EXPECT_NE(log.str().find("Health check failed, reconnecting..."), std::string::npos)
        << log.str();
}

TEST(pool, max_lifetime_and_idle_timeout_retire_connections)
{
    run([]() -> awaitable<void> {
        pgco::pool aging(co_await asio::this_coro::executor,
                         pgco::pool_options::from_url(url_with("max_lifetime=0.4")));
        auto first = co_await aging.query_one<int>("SELECT pg_backend_pid()");
        EXPECT_EQ(co_await aging.query_one<int>("SELECT pg_backend_pid()"), first);
        co_await sleep_for(500ms);
        EXPECT_NE(co_await aging.query_one<int>("SELECT pg_backend_pid()"), first);
        co_await aging.close();

        pgco::pool idle(co_await asio::this_coro::executor,
                        pgco::pool_options::from_url(url_with("idle_timeout=0.2")));
        co_await idle.execute("SELECT 1");
        EXPECT_EQ(idle.stats().idle, 1u);
        // Maintenance runs at least once a second.
        EXPECT_TRUE(co_await eventually([&] { return idle.stats().idle == 0; }, 3s));
        EXPECT_EQ(idle.stats().open, 0u);
        co_await idle.close();
    });
}

TEST(pool, min_idle_connections_are_opened_ahead_of_demand)
{
    run([]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor,
                     pgco::pool_options::from_url(url_with("min_idle=2&idle_timeout=0.1")));
        EXPECT_TRUE(co_await eventually([&] { return p.stats().idle == 2; }, 3s));
        EXPECT_EQ(p.stats().connections_opened, 2u);
        // idle_timeout never takes the pool below min_idle.
        co_await sleep_for(1200ms);
        EXPECT_EQ(p.stats().idle, 2u);
        co_await p.close();
    });
}

TEST(pool, close_on_signals_closes_gracefully_and_leaves_other_handlers_alone)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // The application's own handler for the same signal.
        asio::signal_set own(ex, SIGTERM);
        bool own_notified = false;
        own.async_wait([&](boost::system::error_code ec, int) { own_notified = !ec; });

        pgco::pool p(ex, pgco::pool_options::from_url(database_url()));
        p.close_on_signals();
        EXPECT_EQ(co_await p.query_one<int>("SELECT 1"), 1);
        ::raise(SIGTERM);
        EXPECT_TRUE(co_await eventually([&] { return p.is_closed() && own_notified; }, 3s));
        EXPECT_TRUE(co_await eventually([&] { return p.stats().open == 0; }, 3s));
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await p.query_one<int>("SELECT 1"); });
        EXPECT_EQ(e.code(), pgco::errc::pool_closed);
    });
}

TEST(pool, stats_report_waits_and_counts)
{
    run([]() -> awaitable<void> {
        // Without multiplexing, so that every statement waits for the connection of its own.
        pgco::pool p(co_await asio::this_coro::executor,
                     pgco::pool_options::from_url(url_with("connection_limit=1&multiplex=false")));
        auto ex = co_await asio::this_coro::executor;
        int done = 0;
        for (int i = 0; i < 5; ++i)
            asio::co_spawn(
                ex,
                [&]() -> awaitable<void> {
                    co_await p.execute("SELECT pg_sleep(0.02)");
                    ++done;
                },
                asio::detached);
        EXPECT_TRUE(co_await eventually([&] { return done == 5; }, 5s));
        auto st = p.stats();
        EXPECT_EQ(st.acquired, 5u);
        EXPECT_EQ(st.connections_opened, 1u);
        EXPECT_EQ(st.open, 1u);
        EXPECT_EQ(st.idle, 1u);
        EXPECT_EQ(st.waiting, 0u);
        // Four callers waited behind one connection for ~20-80 ms each.
        EXPECT_GE(st.acquire_wait_p99, 15ms);
        EXPECT_LE(st.acquire_wait_p50, st.acquire_wait_p99);
        co_await p.close();
    });
}

TEST(pool, waiters_are_served_first_come_first_served)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
        auto held = co_await p.acquire();
        std::vector<int> order;
        for (int i = 0; i < 6; ++i) {
            asio::co_spawn(
                ex,
                [&p, &order, i]() -> awaitable<void> {
                    auto c = co_await p.acquire();
                    order.push_back(i);
                    co_await c->execute("SELECT 1");
                },
                asio::detached);
            co_await sleep_for(5ms); // queue them one after the other
        }
        EXPECT_EQ(p.stats().waiting, 6u);
        held.release();
        EXPECT_TRUE(co_await eventually([&] { return order.size() == 6; }, 5s));
        EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
        co_await p.close();
    });
}

TEST(pool, connection_cancelled_mid_result_is_not_reused)
{
    using namespace asio::experimental::awaitable_operators;
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
        int cancelled_pid = 0;
        {
            auto c = co_await p.acquire();
            cancelled_pid = c->backend_pid();
            asio::steady_timer timer(ex, 100ms);
            auto winner = co_await (c->execute("SELECT pg_sleep(5)") ||
                                    timer.async_wait(asio::use_awaitable));
            EXPECT_EQ(winner.index(), 1u);
        } // returned with results still pending
        auto start = clock_type::now();
        EXPECT_NE(co_await p.query_one<int>("SELECT pg_backend_pid()"), cancelled_pid);
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_EQ(p.stats().open, 1u);
        co_await p.close();
    });
}
