#pragma once

// Helpers for tests that talk to the real PostgreSQL server started by the CTest fixture
// (scripts/pg-sandbox), or to the server named by PGCO_TEST_DATABASE_URL.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <functional>
#include <string>

namespace pgco::test {

/// The URL of the test server. Fails the test (never skips it) when there is none.
std::string database_url();

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

} // namespace pgco::test
