#pragma once

// Helpers for tests that talk to the real PostgreSQL server started by the CTest fixture
// (scripts/pg-sandbox), or to the server named by PGCO_TEST_DATABASE_URL.

#include "support/database_url.hpp"

#include <pgco/connection.hpp>
#include <pgco/error.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgco::test {

/// The test URL with its password replaced by `password`.
std::string url_with_password(const std::string& password);

/// The password of the test URL.
std::string database_password();

/// Runs `body` on a fresh io_context until it finishes or `limit` passes. A hang fails the
/// test instead of the job; an exception from `body` is rethrown here, so GoogleTest reports it.
inline void run(const std::function<boost::asio::awaitable<void>()>& body,
                std::chrono::milliseconds limit = std::chrono::seconds(30))
{
    boost::asio::io_context io;
    bool finished = false;
    std::exception_ptr failure;
    boost::asio::co_spawn(io, body(), [&](std::exception_ptr e) {
        finished = true;
        failure = e;
    });
    io.run_for(limit);
    ASSERT_TRUE(finished) << "the coroutine did not finish within " << limit.count() << " ms";
    if (failure)
        std::rethrow_exception(failure);
}

using clock_type = std::chrono::steady_clock;

/// Milliseconds since `start`.
inline long long ms_since(clock_type::time_point start)
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count();
}

/// Waits on an Asio timer.
inline boost::asio::awaitable<void> sleep_for(std::chrono::milliseconds d)
{
    boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, d);
    co_await t.async_wait(boost::asio::use_awaitable);
}

/// The test URL with pgco's (or libpq's) parameters appended; the sandbox URL has no query.
inline std::string url_with(const std::string& params)
{
    return database_url() + "?" + params;
}

/// The test server's TCP port (the sandbox URL has the shape
/// postgresql://user:password@127.0.0.1:port/db).
inline unsigned short server_port()
{
    auto url = database_url();
    auto at = url.rfind('@');
    auto colon = url.find(':', at);
    auto slash = url.find('/', colon);
    if (at == std::string::npos || colon == std::string::npos || slash == std::string::npos)
        throw std::runtime_error("unexpected sandbox URL shape");
    return static_cast<unsigned short>(std::stoi(url.substr(colon + 1, slash - colon - 1)));
}

/// The test URL with its one host:port replaced by a list of hosts on 127.0.0.1 at `ports`
/// (proxies, closed ports, the server), tried by libpq in order, and with `params` (a query
/// string without '?') appended if not empty.
inline std::string url_via_ports(const std::vector<unsigned short>& ports,
                                 const std::string& params = {})
{
    auto url = database_url();
    auto at = url.rfind('@');
    auto slash = url.find('/', at);
    std::string hosts;
    for (auto port : ports)
        hosts += (hosts.empty() ? "" : ",") + std::string("127.0.0.1:") + std::to_string(port);
    return url.substr(0, at + 1) + hosts + url.substr(slash) + (params.empty() ? "" : "?" + params);
}

/// The test URL with its port replaced by `port` (a proxy in front of the server), and with
/// `params` (a query string without '?') appended if not empty.
inline std::string url_via_port(unsigned short port, const std::string& params = {})
{
    return url_via_ports({port}, params);
}

/// Polls `pred` every few milliseconds until it holds or `limit` passes; returns its last value.
template <class Pred>
boost::asio::awaitable<bool> eventually(Pred pred, std::chrono::milliseconds limit)
{
    auto deadline = clock_type::now() + limit;
    while (!pred()) {
        if (clock_type::now() >= deadline)
            co_return false;
        co_await sleep_for(std::chrono::milliseconds(5));
    }
    co_return true;
}

/// A connection to `url` (the test server by default) on the current executor.
inline boost::asio::awaitable<pgco::connection> connected(std::string url = database_url())
{
    pgco::connection c(co_await boost::asio::this_coro::executor);
    co_await c.connect(url);
    co_return c;
}

/// Runs `op` and returns the pgco::error it throws; fails the test if it throws nothing.
template <class Op>
boost::asio::awaitable<pgco::error> expect_error(Op op)
{
    try {
        co_await op();
    } catch (const pgco::error& e) {
        co_return e;
    }
    ADD_FAILURE() << "expected a pgco::error";
    co_return pgco::error(pgco::errc::ok, "none");
}

} // namespace pgco::test
