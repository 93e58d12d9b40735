#pragma once

#include <pgco/config.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgco {

/// One message sent with `NOTIFY channel, 'payload'` or `pg_notify(channel, payload)`.
struct notification
{
    std::string channel; ///< the channel name exactly as the sender wrote it
    std::string payload; ///< empty when the sender gave none
    int backend_pid = 0; ///< the server process that sent it
};

namespace detail {
struct listener_state;
} // namespace detail

/// A stream of LISTEN/NOTIFY notifications on a dedicated connection.
///
/// ```cpp
/// pgco::listener l(ex, pgco::pool_options::from_env("DATABASE_URL"));
/// co_await l.listen("orders");
/// for (;;) {
///     pgco::notification n = co_await l.next();
///     ...
/// }
/// ```
///
/// The listener owns one connection, opened by the first `listen`. `next()` waits on its socket
/// without blocking a thread. When the connection is lost (server restart, the backend
/// terminated, a network failure), the waiting `next()` reconnects with the pause schedule of
/// `opts.retry` (the first entry before the first attempt, the last one repeated for as long
/// as the caller keeps waiting; `retry.deadline`, when set, bounds the whole outage), issues
/// LISTEN again for every channel, logs `Listener reconnected; re-subscribed to N channels`
/// and goes on waiting. Authentication and other non-transient errors end the wait with that
/// error instead.
///
/// Notifications sent while the connection was down are lost: PostgreSQL delivers them only
/// to sessions listening at the time of the commit. `reconnects()` counts the
/// re-subscriptions, so an application can tell that it may have missed some (and, for
/// example, re-read the state it was told about).
///
/// Not thread-safe: use a listener from one strand. `listen` and `unlisten` may be called
/// while another coroutine waits in `next()` (the wait steps aside while they run); only one
/// coroutine may wait in `next()` at a time (a second one fails with `connection_busy`).
///
/// Cancellation: every operation ends with `errc::cancelled` when awaited with a cancellation
/// slot that fires (for example `l.next() || timer.async_wait(...)`); the listener stays
/// usable and keeps every notification not yet handed out.
class listener
{
public:
    using executor_type = boost::asio::any_io_executor;

    /// A listener that will connect with `opts` (its connection string, `connect_timeout`,
    /// `query_timeout` and `retry`; the pool's sizing options do not apply) on `ex`.
    listener(executor_type ex, pool_options opts);
    /// Closes the connection (as `close()`).
    ~listener();
    listener(const listener&) = delete;
    listener& operator=(const listener&) = delete;

    /// The executor every operation runs on.
    executor_type get_executor() const noexcept;

    /// Subscribes to `channel` (connecting first if needed). The name is sent as a quoted
    /// identifier, so any text is safe and case is kept; it must be 1 to 63 bytes without a
    /// NUL (`errc::invalid_parameter` otherwise), since the server would truncate longer
    /// names. Subscribing twice is harmless.
    boost::asio::awaitable<void> listen(std::string_view channel);

    /// Unsubscribes from `channel`; notifications of it not yet handed out are dropped.
    boost::asio::awaitable<void> unlisten(std::string_view channel);

    /// Unsubscribes from every channel (`UNLISTEN *`); queued notifications are dropped.
    boost::asio::awaitable<void> unlisten_all();

    /// The next notification, in the order the server sent them. Waits for as long as it
    /// takes, reconnecting as described above. Throws `errc::connection_closed` if the
    /// listener is (or gets) closed, `errc::cancelled` on cancellation.
    boost::asio::awaitable<notification> next();

    /// As `next()`, but gives up after `timeout` and returns nothing.
    boost::asio::awaitable<std::optional<notification>> next_for(std::chrono::milliseconds timeout);

    /// The channels subscribed to, in the order they were first listened to.
    std::vector<std::string> channels() const;

    /// Notifications received and not yet handed out by `next()`.
    std::size_t pending() const noexcept;

    /// How many times the connection was re-established after a loss (and every channel
    /// subscribed again). Each one may have lost notifications.
    std::uint64_t reconnects() const noexcept;

    /// True while the connection is open.
    bool is_connected() const noexcept;

    /// The server process serving the connection now (as `pg_backend_pid()`), or 0.
    int backend_pid() const noexcept;

    /// Closes the connection for good. A `next()`, `listen` or `unlisten` in progress ends with
    /// `errc::connection_closed`; later calls fail the same way.
    void close() noexcept;

    /// True after `close()`.
    bool is_closed() const noexcept;

private:
    std::shared_ptr<detail::listener_state> state_;
};

} // namespace pgco
