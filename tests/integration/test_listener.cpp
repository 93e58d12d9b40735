// pgco::listener (LISTEN/NOTIFY) against the real server started by the CTest fixture.

#include "support/server.hpp"

#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/listener.hpp>
#include <pgco/log.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <gtest/gtest.h>

#include <optional>
#include <sstream>
#include <variant>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::connected;
using pgco::test::database_url;
using pgco::test::expect_error;
using pgco::test::ms_since;
using pgco::test::run;
using pgco::test::sleep_for;

namespace {

// Reconnects fast, so the kill test does not sit through the default 2 s and 4 s pauses.
pgco::pool_options listener_options()
{
    auto opts = pgco::pool_options::from_url(database_url());
    opts.retry.backoff = {0ms, 100ms};
    return opts;
}

// Sends through bound parameters: pg_notify takes the channel as text, so no quoting is
// involved on the sending side.
awaitable<void> notify(pgco::connection& sender, const std::string& channel,
                       const std::string& payload)
{
    co_await sender.exec("SELECT pg_notify($1, $2)", channel, payload);
}

// next() with a bound, failing the test instead of hanging it.
awaitable<pgco::notification> next_within(pgco::listener& l, std::chrono::milliseconds limit = 5s)
{
    auto n = co_await l.next_for(limit);
    if (!n)
        throw std::runtime_error("no notification within " + std::to_string(limit.count()) + " ms");
    co_return std::move(*n);
}

} // namespace

TEST(listener, receives_a_notification_with_its_payload)
{
    run([]() -> awaitable<void> {
        pgco::listener l(co_await asio::this_coro::executor, listener_options());
        co_await l.listen("pgco_events");
        EXPECT_TRUE(l.is_connected());
        EXPECT_GT(l.backend_pid(), 0);
        auto sender = co_await connected();
        co_await notify(sender, "pgco_events", "hello, 'world' \"quoted\"");
        auto n = co_await next_within(l);
        EXPECT_EQ(n.channel, "pgco_events");
        EXPECT_EQ(n.payload, "hello, 'world' \"quoted\"");
        EXPECT_EQ(n.backend_pid, sender.backend_pid());
        EXPECT_EQ(l.reconnects(), 0u);
        l.close();
    });
}

TEST(listener, several_channels_in_order)
{
    run([]() -> awaitable<void> {
        pgco::listener l(co_await asio::this_coro::executor, listener_options());
        co_await l.listen("pgco_a");
        co_await l.listen("pgco_b");
        co_await l.listen("pgco_c");
        co_await l.listen("pgco_b"); // twice is harmless
        EXPECT_EQ(l.channels(), (std::vector<std::string>{"pgco_a", "pgco_b", "pgco_c"}));
        auto sender = co_await connected();
        co_await notify(sender, "pgco_b", "1");
        co_await notify(sender, "pgco_a", "2");
        co_await notify(sender, "pgco_unheard", "nobody listens");
        co_await notify(sender, "pgco_c", "3");
        for (const char* expected : {"pgco_b", "pgco_a", "pgco_c"}) {
            auto n = co_await next_within(l);
            EXPECT_EQ(n.channel, expected);
        }
        EXPECT_FALSE(co_await l.next_for(100ms));
    });
}

TEST(listener, unlisten_stops_a_channel)
{
    run([]() -> awaitable<void> {
        pgco::listener l(co_await asio::this_coro::executor, listener_options());
        co_await l.listen("pgco_keep");
        co_await l.listen("pgco_drop");
        auto sender = co_await connected();
        co_await notify(sender, "pgco_drop", "queued before unlisten");
        co_await sleep_for(100ms);
        co_await l.unlisten("pgco_drop");
        EXPECT_EQ(l.channels(), std::vector<std::string>{"pgco_keep"});
        co_await notify(sender, "pgco_drop", "after unlisten");
        co_await notify(sender, "pgco_keep", "kept");
        auto n = co_await next_within(l);
        EXPECT_EQ(n.channel, "pgco_keep");
        EXPECT_EQ(n.payload, "kept");

        co_await l.unlisten_all();
        EXPECT_TRUE(l.channels().empty());
        co_await notify(sender, "pgco_keep", "after unlisten_all");
        EXPECT_FALSE(co_await l.next_for(200ms));
    });
}

TEST(listener, channel_names_are_quoted_not_spliced)
{
    run([]() -> awaitable<void> {
        pgco::listener l(co_await asio::this_coro::executor, listener_options());
        const std::string odd = "Mixed Case \"q\"; DROP TABLE x; --";
        co_await l.listen(odd);
        auto sender = co_await connected();
        co_await notify(sender, odd, "odd");
        // Unquoted, the server would have folded the case: this one is not subscribed.
        co_await notify(sender, "mixed case \"q\"; drop table x; --", "folded");
        auto n = co_await next_within(l);
        EXPECT_EQ(n.channel, odd);
        EXPECT_EQ(n.payload, "odd");
        EXPECT_FALSE(co_await l.next_for(100ms));

        for (const std::string bad :
             {std::string(), std::string(64, 'x'), std::string("a\0b", 3)}) {
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await l.listen(bad); });
            EXPECT_EQ(e.code(), pgco::errc::invalid_parameter) << e.what();
        }
        co_await l.listen(std::string(63, 'y')); // the longest name the server keeps whole
        EXPECT_EQ(l.channels().size(), 2u);
    });
}

TEST(listener, notification_arriving_during_listen_is_kept)
{
    run([]() -> awaitable<void> {
        pgco::listener l(co_await asio::this_coro::executor, listener_options());
        co_await l.listen("pgco_first");
        auto sender = co_await connected();
        co_await notify(sender, "pgco_first", "early");
        co_await sleep_for(50ms); // it reaches the socket before the next command's answer
        co_await l.listen("pgco_second");
        EXPECT_EQ(l.pending(), 1u);
        auto n = co_await next_within(l);
        EXPECT_EQ(n.payload, "early");
    });
}

TEST(listener, timeout_and_cancellation_leave_it_usable)
{
    run([]() -> awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto ex = co_await asio::this_coro::executor;
        pgco::listener l(ex, listener_options());
        co_await l.listen("pgco_quiet");

        auto start = clock_type::now();
        EXPECT_FALSE(co_await l.next_for(150ms));
        EXPECT_GE(ms_since(start), 140);
        EXPECT_LT(ms_since(start), 2000);

        asio::steady_timer timer(ex, 100ms);
        start = clock_type::now();
        auto next = l.next();
        auto expiry = timer.async_wait(asio::use_awaitable);
        auto winner = co_await (std::move(next) || std::move(expiry));
        EXPECT_EQ(winner.index(), 1u);
        EXPECT_LT(ms_since(start), 2000);

        auto sender = co_await connected();
        co_await notify(sender, "pgco_quiet", "still here");
        auto n = co_await next_within(l);
        EXPECT_EQ(n.payload, "still here");
        EXPECT_TRUE(l.is_connected());
    });
}

TEST(listener, listen_while_next_waits)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::listener l(ex, listener_options());
        co_await l.listen("pgco_one");
        std::optional<pgco::notification> got;
        bool done = false;
        asio::co_spawn(
            ex,
            [&]() -> awaitable<void> {
                got = co_await l.next_for(5s);
                done = true;
            },
            asio::detached);
        co_await sleep_for(50ms); // next() is waiting on the socket now
        co_await l.listen("pgco_two");
        auto sender = co_await connected();
        co_await notify(sender, "pgco_two", "via the new channel");
        for (int i = 0; i < 500 && !done; ++i)
            co_await sleep_for(10ms);
        EXPECT_TRUE(done);
        EXPECT_TRUE(got);
        if (got)
            EXPECT_EQ(got->channel, "pgco_two");
    });
}

TEST(listener, resubscribes_after_its_backend_is_killed)
{
    std::ostringstream log;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
    auto captured = std::make_shared<spdlog::logger>("pgco", sink);
    captured->set_level(spdlog::level::debug);
    pgco::set_logger(captured);
    run(
        []() -> awaitable<void> {
            pgco::listener l(co_await asio::this_coro::executor, listener_options());
            co_await l.listen("pgco_survivor");
            co_await l.listen("pgco_other");
            const int old_pid = l.backend_pid();
            EXPECT_GT(old_pid, 0);
            auto sender = co_await connected();
            co_await notify(sender, "pgco_survivor", "before");
            EXPECT_EQ((co_await next_within(l)).payload, "before");

            EXPECT_TRUE(
                co_await sender.query_one<bool>("SELECT pg_terminate_backend($1)", old_pid));
            // The signal is only sent: until the backend has exited it may still deliver.
            auto start = clock_type::now();
            while (ms_since(start) < 5000 &&
                   co_await sender.query_one<std::int64_t>(
                       "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid) != 0)
                co_await sleep_for(10ms);
            // Notifications sent while the listener is down are lost, so keep sending (bounded)
            // until one arrives through the new connection.
            std::optional<pgco::notification> after;
            int sent = 0;
            start = clock_type::now();
            while (!after && sent < 50 && ms_since(start) < 15000) {
                co_await notify(sender, "pgco_survivor", "after " + std::to_string(++sent));
                after = co_await l.next_for(300ms);
            }
            EXPECT_TRUE(after) << "no notification after the kill; sent " << sent;
            if (!after)
                co_return;
            EXPECT_EQ(after->payload.rfind("after ", 0), 0u) << after->payload;
            EXPECT_EQ(l.reconnects(), 1u);
            EXPECT_TRUE(l.is_connected());
            EXPECT_NE(l.backend_pid(), old_pid);
            EXPECT_EQ(l.channels().size(), 2u);

            // Both channels work on the new session.
            co_await notify(sender, "pgco_other", "other");
            for (int i = 0; i < 60; ++i) { // drain stray "after" duplicates, bounded
                auto n = co_await next_within(l);
                if (n.channel == "pgco_other") {
                    EXPECT_EQ(n.payload, "other");
                    break;
                }
            }
        },
        30s);
    pgco::set_logger(nullptr);
    EXPECT_NE(log.str().find("Listener connection lost"), std::string::npos) << log.str();
    EXPECT_NE(log.str().find("Listener reconnected; re-subscribed to 2 channels"),
              std::string::npos)
        << log.str();
}

TEST(listener, listen_during_a_reconnect_goes_through)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::listener l(ex, listener_options());
        co_await l.listen("pgco_old");
        const int old_pid = l.backend_pid();
        auto sender = co_await connected();
        co_await sender.query_one<bool>("SELECT pg_terminate_backend($1)", old_pid);
        auto start = clock_type::now();
        while (ms_since(start) < 5000 &&
               co_await sender.query_one<std::int64_t>(
                   "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid) != 0)
            co_await sleep_for(10ms);

        std::optional<pgco::notification> got;
        bool done = false;
        asio::co_spawn(
            ex,
            [&]() -> awaitable<void> {
                for (int i = 0; i < 100 && !got; ++i) { // skips nothing: only pgco_new is sent
                    got = co_await l.next_for(10s);
                }
                done = true;
            },
            asio::detached);
        co_await sleep_for(5ms); // next() is reconnecting (or already waiting again)
        start = clock_type::now();
        co_await l.listen("pgco_new");
        EXPECT_LT(ms_since(start), 3000);
        EXPECT_EQ(l.reconnects(), 1u);
        EXPECT_EQ(l.channels().size(), 2u);
        co_await notify(sender, "pgco_new", "through the new session");
        for (int i = 0; i < 500 && !done; ++i)
            co_await sleep_for(10ms);
        EXPECT_TRUE(got);
        if (got)
            EXPECT_EQ(got->channel, "pgco_new");
    });
}

TEST(listener, close_ends_a_waiting_next)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::listener l(ex, listener_options());
        co_await l.listen("pgco_closing");
        std::optional<pgco::error> failure;
        bool done = false;
        asio::co_spawn(
            ex,
            [&]() -> awaitable<void> {
                try {
                    co_await l.next();
                } catch (const pgco::error& e) {
                    failure = e;
                }
                done = true;
            },
            asio::detached);
        co_await sleep_for(50ms);
        EXPECT_FALSE(done);
        auto start = clock_type::now();
        l.close();
        for (int i = 0; i < 200 && !done; ++i)
            co_await sleep_for(5ms);
        EXPECT_TRUE(done);
        EXPECT_LT(ms_since(start), 1000);
        EXPECT_TRUE(failure);
        if (failure) {
            EXPECT_EQ(failure->code(), pgco::errc::connection_closed);
            EXPECT_NE(std::string(failure->what()).find("listener is closed"), std::string::npos)
                << failure->what();
        }
        EXPECT_TRUE(l.is_closed());
        EXPECT_FALSE(l.is_connected());
        auto e = co_await expect_error([&]() -> awaitable<void> { co_await l.listen("x"); });
        EXPECT_EQ(e.code(), pgco::errc::connection_closed);
    });
}

TEST(listener, unreachable_server_listen_fails_and_close_ends_a_retrying_next)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // A loopback port with nothing listening: refused at once.
        asio::ip::tcp::acceptor probe(ex, {asio::ip::make_address("127.0.0.1"), 0});
        const auto port = probe.local_endpoint().port();
        probe.close();
        auto opts = pgco::pool_options::from_url(
            "postgresql://pgco@127.0.0.1:" + std::to_string(port) + "/pgco");
        opts.retry.attempts = 1;
        opts.retry.backoff = {0ms, 50ms};
        {
            pgco::listener l(ex, opts);
            auto start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await l.listen("x"); });
            EXPECT_EQ(e.code(), pgco::errc::cannot_connect) << e.what();
            EXPECT_LT(ms_since(start), 5000);
        }

        // next() keeps retrying while it waits; a long pause is cut short by close().
        opts.retry.backoff = {0ms, 10s};
        pgco::listener l(ex, opts);
        std::optional<pgco::error> failure;
        bool done = false;
        asio::co_spawn(
            ex,
            [&]() -> awaitable<void> {
                try {
                    co_await l.next();
                } catch (const pgco::error& e) {
                    failure = e;
                }
                done = true;
            },
            asio::detached);
        co_await sleep_for(200ms);
        EXPECT_FALSE(done);
        auto start = clock_type::now();
        l.close();
        for (int i = 0; i < 200 && !done; ++i)
            co_await sleep_for(5ms);
        EXPECT_TRUE(done);
        EXPECT_LT(ms_since(start), 1000);
        EXPECT_TRUE(failure);
        if (failure)
            EXPECT_EQ(failure->code(), pgco::errc::connection_closed) << failure->what();
    });
}
