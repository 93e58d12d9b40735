#pragma once

#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/detail/pool_policy.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string_view>
#include <vector>

namespace pgco {

namespace detail {
struct pool_state;
}

/// Counters and gauges of a pool at one moment (see `pool::stats`).
struct pool_stats
{
    std::size_t open = 0;       ///< connections open: idle + in use + being checked
    std::size_t idle = 0;       ///< open and waiting in the pool
    std::size_t in_use = 0;     ///< handed out to callers
    std::size_t connecting = 0; ///< being opened now
    std::size_t waiting = 0;    ///< callers waiting in `acquire`

    std::uint64_t acquired = 0;              ///< successful acquires, ever
    std::uint64_t acquire_timeouts = 0;      ///< acquires that ran out of `pool_timeout`
    std::uint64_t connections_opened = 0;    ///< successful connects, ever
    std::uint64_t connections_closed = 0;    ///< connections closed for any reason
    std::uint64_t connect_failures = 0;      ///< connects that failed
    std::uint64_t closed_by_server = 0;      ///< idle connections found closed by the server
    std::uint64_t health_check_failures = 0; ///< pings that failed or timed out
    std::uint64_t reconnects = 0;            ///< `reconnect()` calls carried out
    std::uint64_t query_retries = 0;         ///< queries repeated by the retry layer

    std::chrono::microseconds acquire_wait_p50{0}; ///< median acquire wait (recent acquires)
    std::chrono::microseconds acquire_wait_p99{0}; ///< 99th percentile acquire wait
};

class pool;

/// A connection borrowed from a pool. Move-only; it goes back to the pool when destroyed,
/// also when the coroutine holding it throws or is cancelled. A connection that is broken,
/// inside a transaction or in the middle of a result is not reused: the pool closes it off the
/// caller's path and opens a fresh one when needed.
class pooled_connection
{
public:
    pooled_connection() = default;
    pooled_connection(pooled_connection&& other) noexcept;
    pooled_connection& operator=(pooled_connection&& other) noexcept;
    ~pooled_connection();

    connection& operator*() noexcept { return *conn_; }
    connection* operator->() noexcept { return conn_.get(); }
    /// True while this handle holds a connection.
    explicit operator bool() const noexcept { return conn_ != nullptr; }

    /// Gives the connection back now (as the destructor would).
    void release() noexcept;

private:
    friend struct detail::pool_state;
    pooled_connection(std::shared_ptr<detail::pool_state> pool, std::unique_ptr<connection> c,
                      const detail::conn_meta& meta) noexcept;

    std::shared_ptr<detail::pool_state> pool_;
    std::unique_ptr<connection> conn_;
    detail::conn_meta meta_;
};

/// A pool of PostgreSQL connections driven by one Asio executor.
///
/// At most `connection_limit` connections are open at once; the right to use one is a permit
/// held in an Asio channel, and callers waiting for a permit are served first come, first
/// served. `acquire` (and every query helper) waits without blocking a thread, for at most
/// `pool_timeout`, connecting included; then it fails with `errc::pool_timeout` (P2024) saying
/// whether every connection was busy or the database could not be reached.
///
/// Idle connections are watched: one the server closes is dropped at once; they are pinged
/// every `health_check_interval`, and retired after `max_lifetime` or `idle_timeout`.
///
/// Thread safety: a pool may be used from any number of coroutines on an `io_context` run by
/// several threads. The pool object itself must outlive nothing: its state lives until the
/// last borrowed connection is returned.
class pool
{
public:
    using executor_type = boost::asio::any_io_executor;

    /// A pool that opens connections on demand (and `min_idle` of them in the background).
    pool(executor_type ex, pool_options opts);
    /// Closes every connection at once; call `close()` first for a graceful shutdown.
    ~pool();
    pool(const pool&) = delete;
    pool& operator=(const pool&) = delete;

    /// The executor the pool's background work runs on.
    executor_type get_executor() const noexcept;

    /// The options the pool was made with.
    const pool_options& options() const noexcept;

    /// Borrows a connection: an idle one, or a new one while fewer than `connection_limit` are
    /// open, or the next one returned. Throws `errc::pool_timeout`, `errc::pool_closed`,
    /// `errc::pool_exhausted` (more than `max_waiters` waiting) or a connect error that waiting
    /// cannot cure (authentication, unknown database).
    boost::asio::awaitable<pooled_connection> acquire();

    /// Runs one statement on a pooled connection and maps every row to `Row`.
    template <class Row, class... Params>
    boost::asio::awaitable<std::vector<Row>> query(std::string_view sql, const Params&... params)
    {
        auto c = co_await acquire();
        co_return co_await c->template query<Row>(sql, params...);
    }

    /// Runs one statement and maps its first row to `Row` (`errc::no_rows` if none).
    template <class Row, class... Params>
    boost::asio::awaitable<Row> query_one(std::string_view sql, const Params&... params)
    {
        auto c = co_await acquire();
        co_return co_await c->template query_one<Row>(sql, params...);
    }

    /// Runs one statement and returns the number of rows it affected.
    template <class... Params>
    boost::asio::awaitable<std::uint64_t> execute(std::string_view sql, const Params&... params)
    {
        auto c = co_await acquire();
        co_return co_await c->execute(sql, params...);
    }

    /// True if the database answers `SELECT 1` within `timeout` on a pooled connection.
    boost::asio::awaitable<bool>
    is_connected(std::chrono::milliseconds timeout = std::chrono::seconds(2));

    /// Replaces every connection: idle ones now, busy ones when they are returned. Concurrent
    /// calls merge into one.
    boost::asio::awaitable<void> reconnect();

    /// Graceful shutdown: new acquires fail with `errc::pool_closed` and waiters are woken with
    /// it; borrowed connections may finish their work for up to `drain_timeout`; then every
    /// connection is closed and the background work stops, so the executor can run out of work.
    boost::asio::awaitable<void>
    close(std::chrono::milliseconds drain_timeout = std::chrono::seconds(10));

    /// True once `close()` has begun.
    bool is_closed() const noexcept;

    /// Closes the pool gracefully when one of `signals` arrives (SIGINT and SIGTERM by
    /// default). Uses `boost::asio::signal_set`, so the application's own signal sets are
    /// still notified; after the first signal the pool stops listening, so a second one has
    /// its usual effect.
    void close_on_signals(std::initializer_list<int> signals = {});

    /// Counters and gauges now.
    pool_stats stats() const;

private:
    std::shared_ptr<detail::pool_state> state_;
};

} // namespace pgco
