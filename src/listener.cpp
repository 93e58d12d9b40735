#include "connection_impl.hpp"
#include "first_of.hpp"

#include <pgco/connection.hpp>
#include <pgco/listener.hpp>
#include <pgco/log.hpp>
#include <pgco/retry.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <libpq-fe.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <random>
#include <utility>

namespace asio = boost::asio;

namespace pgco {
namespace detail {

struct listener_state
{
    listener_state(asio::any_io_executor e, pool_options o)
        : ex(e), opts(std::move(o)), conn(e), signal(e, asio::steady_timer::time_point::max())
    {}

    asio::any_io_executor ex;
    pool_options opts;
    connection conn;
    // Never expires. Cancelling it wakes every coroutine waiting for the state to change
    // (closing, a command starting or ending, next() returning): a condition variable for one
    // strand, so no check-then-wait can miss a change.
    asio::steady_timer signal;
    std::vector<std::string> channels;
    std::deque<notification> queue;
    std::uint64_t reconnects = 0;
    bool closed = false;
    // connection::connect is running: closing the connection under it would race libpq on the
    // connect worker thread, so close() cancels it through `signal` instead.
    bool connecting = false;
    // A connection was lost and not yet replaced: the next connect is a reconnect.
    bool lost = false;

    // Who drives the connection: next() (reading, reconnecting) or a command (LISTEN...).
    enum class owner_type
    {
        none,
        next,
        command,
    } owner = owner_type::none;
    bool next_active = false;  // a coroutine is inside next()
    bool next_waiting = false; // ...and only waits on the socket, so it can step aside

    void wake() noexcept
    {
        try {
            signal.cancel();
        } catch (...) {
            // Cancelling a timer fails only if the reactor is gone; nobody is waiting then.
        }
    }
};

} // namespace detail

namespace {

using detail::listener_state;
using owner_type = listener_state::owner_type;
using clock_type = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

[[noreturn]] void throw_closed()
{
    throw error(errc::connection_closed, "the listener is closed");
}

[[noreturn]] void throw_cancelled()
{
    throw error(errc::cancelled, "the listener operation was cancelled");
}

std::string trimmed(const char* s)
{
    std::string out = s ? s : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
        out.pop_back();
    return out;
}

// After every wait: the caller's cancellation first, then close().
asio::awaitable<void> check_interrupted(listener_state& s)
{
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none)
        throw_cancelled();
    if (s.closed)
        throw_closed();
}

void validate_channel(std::string_view channel)
{
    // The server truncates identifiers to NAMEDATALEN - 1 bytes; a truncated subscription
    // would never match the name the application asked for.
    if (channel.empty() || channel.size() > 63 || channel.find('\0') != std::string_view::npos)
        throw error(errc::invalid_parameter,
                    "a channel name must be 1 to 63 bytes long and contain no NUL byte");
}

// LISTEN takes no bound parameters, so the name travels as an identifier quoted by libpq
// (which knows the connection's encoding), never as spliced text.
std::string quoted_channel(listener_state& s, std::string_view channel)
{
    PGconn* c = detail::impl_of(s.conn).conn;
    if (!c)
        throw error(errc::connection_closed, "the listener's connection is closed");
    char* q = PQescapeIdentifier(c, channel.data(), channel.size());
    if (!q)
        throw error(errc::invalid_parameter,
                    "the channel name cannot be quoted: " + trimmed(PQerrorMessage(c)));
    std::string out(q);
    PQfreemem(q);
    return out;
}

// Moves what libpq has parsed into the queue. PQnotifies also parses buffered input, which is
// what hands a FATAL message (57P01) to the notice receiver that marks the connection doomed.
void drain(listener_state& s)
{
    PGconn* c = detail::impl_of(s.conn).conn;
    if (!c)
        return;
    while (PGnotify* n = PQnotifies(c)) {
        s.queue.push_back(
            notification{n->relname ? n->relname : "", n->extra ? n->extra : "", n->be_pid});
        PQfreemem(n);
    }
}

// Reads whatever arrived; false (with the reason) if the connection is gone.
bool pump(listener_state& s, std::string& why)
{
    auto& impl = detail::impl_of(s.conn);
    if (!impl.conn) {
        why = "the connection is closed";
        return false;
    }
    bool read_ok = PQconsumeInput(impl.conn) != 0;
    drain(s); // notifications that arrived before an EOF are still delivered
    if (impl.doomed) {
        why = "the server terminated the session";
        return false;
    }
    if (!read_ok || PQstatus(impl.conn) != CONNECTION_OK) {
        why = trimmed(PQerrorMessage(impl.conn));
        if (why.empty())
            why = "the server closed the connection";
        return false;
    }
    return true;
}

void mark_lost(listener_state& s, const std::string& why)
{
    s.conn.close();
    if (!s.lost)
        logger()->warn("Listener connection lost ({}); notifications sent until it is back are "
                       "lost; reconnecting...",
                       why);
    s.lost = true;
}

std::chrono::milliseconds with_jitter(std::chrono::milliseconds pause, double jitter)
{
    if (jitter <= 0 || pause.count() <= 0)
        return pause;
    thread_local std::mt19937 gen{std::random_device{}()};
    std::uniform_real_distribution<double> extra(0.0, jitter);
    return pause + std::chrono::milliseconds(static_cast<long long>(pause.count() * extra(gen)));
}

enum class woke
{
    done,     // what was waited for happened
    signal,   // the state changed
    deadline, // the caller's deadline passed
};

// Waits for a state change or the deadline.
asio::awaitable<woke> wait_signal(listener_state& s, asio::steady_timer& deadline)
{
    auto [order, signal_ec, deadline_ec] = co_await detail::first_of(
        s.signal.async_wait(asio::deferred), deadline.async_wait(asio::deferred));
    co_await check_interrupted(s);
    co_return order[0] == 1 && !deadline_ec ? woke::deadline : woke::signal;
}

// Sleeps for `pause` unless the deadline comes first; close() and cancellation end it.
asio::awaitable<woke> sleep_for(listener_state& s, std::chrono::milliseconds pause,
                                asio::steady_timer& deadline)
{
    asio::steady_timer t(s.ex, pause);
    for (int wakes = 0; wakes < 1000; ++wakes) {
        auto [order, timer_ec, signal_ec, deadline_ec] = co_await detail::first_of(
            t.async_wait(asio::deferred), s.signal.async_wait(asio::deferred),
            deadline.async_wait(asio::deferred));
        co_await check_interrupted(s);
        if (order[0] == 0 && !timer_ec)
            co_return woke::done;
        if (order[0] == 2 && !deadline_ec)
            co_return woke::deadline;
        // A state change that does not concern a reconnect: keep sleeping.
    }
    co_return woke::done;
}

// Runs one LISTEN/UNLISTEN and keeps every notification that arrived with its result.
asio::awaitable<void> run_command(listener_state& s, std::string sql)
{
    try {
        co_await s.conn.exec(sql);
    } catch (...) {
        drain(s);
        throw;
    }
    drain(s);
}

// Opens the connection and subscribes to every channel again, pausing before each attempt as
// `opts.retry` says. `bounded`: give up after `retry.attempts` failed retries (a command that
// finds no connection); otherwise go on while the caller waits (next()). `retry.deadline`, when
// set, bounds both. Returns false if the caller's deadline passed first.
asio::awaitable<bool> restore(std::shared_ptr<listener_state> sp, asio::steady_timer& deadline,
                              bool bounded)
{
    listener_state& s = *sp;
    const auto& policy = s.opts.retry;
    const auto start = clock_type::now();
    std::optional<error> last;
    for (unsigned attempt = 1; attempt < 1000000; ++attempt) {
        if (s.closed)
            throw_closed();
        if (last) {
            bool out_of_attempts = bounded && attempt > policy.attempts + 1;
            bool out_of_time =
                policy.deadline.count() > 0 && clock_type::now() - start >= policy.deadline;
            if (out_of_attempts || out_of_time)
                throw *last;
        }
        auto pause = with_jitter(policy.pause_before(attempt), policy.jitter);
        if (pause.count() > 0) {
            if (last)
                logger()->info("Listener retrying in {}ms...", pause.count());
            if (co_await sleep_for(s, pause, deadline) == woke::deadline)
                co_return false;
        }

        s.connecting = true;
        auto [order, connect_ex, signal_ec, deadline_ec] = co_await detail::first_of(
            asio::co_spawn(s.ex, s.conn.connect(s.opts), asio::deferred),
            s.signal.async_wait(asio::deferred), deadline.async_wait(asio::deferred));
        s.connecting = false;
        if (s.closed || order[0] != 0) {
            // Closed, cancelled, past the deadline or woken: the connect was cancelled and has
            // finished; whatever it left open goes.
            s.conn.close();
            co_await check_interrupted(s);
            if (order[0] == 2 && !deadline_ec)
                co_return false;
            --attempt; // woken by an unrelated state change: try again at once
            continue;
        }
        if (connect_ex) {
            try {
                std::rethrow_exception(connect_ex);
            } catch (const error& e) {
                // Wrong password, unknown database...: waiting will not fix it.
                if (classify(e) == retry_decision::fail)
                    throw;
                logger()->warn("Listener connect attempt {} failed: {}", attempt, e.what());
                last = e;
                continue;
            }
        }
        s.conn.set_query_timeout(s.opts.query_timeout);

        const auto subscriptions = s.channels; // a copy: commands wait, but be safe anyway
        try {
            for (const auto& ch : subscriptions)
                co_await run_command(s, "LISTEN " + quoted_channel(s, ch));
        } catch (const error& e) {
            // Partly subscribed is not subscribed: start over next time.
            s.conn.close();
            if (s.closed)
                throw_closed();
            if (!is_connection_error(e))
                throw;
            logger()->warn("Listener re-subscribing failed: {}", e.what());
            last = e;
            continue;
        } catch (...) {
            s.conn.close();
            throw;
        }

        if (s.lost) {
            ++s.reconnects;
            logger()->warn("Listener reconnected; re-subscribed to {} channel{} (backend pid {}); "
                           "notifications sent while it was down are lost",
                           subscriptions.size(), subscriptions.size() == 1 ? "" : "s",
                           s.conn.backend_pid());
        } else {
            logger()->info("Listener connected (backend pid {})", s.conn.backend_pid());
        }
        s.lost = false;
        co_return true;
    }
    throw *last;
}

// Marks the end of a command (or of next()) and wakes whoever waits for the connection.
struct command_guard
{
    listener_state& s;
    ~command_guard()
    {
        if (s.owner == owner_type::command)
            s.owner = owner_type::none;
        s.wake();
    }
};

struct next_guard
{
    listener_state& s;
    ~next_guard()
    {
        s.next_active = false;
        s.next_waiting = false;
        if (s.owner == owner_type::next) {
            s.owner = owner_type::none;
            s.wake();
        }
    }
};

// Takes the connection for a command. A next() that merely waits on the socket steps aside at
// once; while next() reconnects or another command runs, the command waits its turn.
asio::awaitable<void> begin_command(listener_state& s)
{
    for (;;) {
        if (s.closed)
            throw_closed();
        if (s.owner == owner_type::none || (s.owner == owner_type::next && s.next_waiting)) {
            s.owner = owner_type::command;
            s.wake();
            co_return;
        }
        co_await s.signal.async_wait(use_tuple);
        co_await check_interrupted(s);
    }
}

// Makes sure the connection is open and subscribed (for a command).
asio::awaitable<void> ensure_connected(std::shared_ptr<listener_state> sp)
{
    std::string why;
    if (detail::impl_of(sp->conn).conn && !pump(*sp, why))
        mark_lost(*sp, why);
    if (!detail::impl_of(sp->conn).conn) {
        asio::steady_timer never(sp->ex, asio::steady_timer::time_point::max());
        co_await restore(sp, never, true);
    }
}

// Turns the exception Asio throws when a co_await starts after cancellation into pgco's.
[[noreturn]] void rethrow_as_pgco()
{
    try {
        throw;
    } catch (const boost::system::system_error& e) {
        if (e.code() == asio::error::operation_aborted)
            throw_cancelled();
        throw error(errc::client_failure, std::string("listener: ") + e.what());
    }
}

asio::awaitable<void> listen_impl(std::shared_ptr<listener_state> sp, std::string channel)
{
    listener_state& s = *sp;
    validate_channel(channel);
    try {
        co_await begin_command(s);
        command_guard guard{s};
        // Two tries: the connection may turn out dead only when the LISTEN is sent.
        for (int tries = 1;; ++tries) {
            co_await ensure_connected(sp);
            try {
                co_await run_command(s, "LISTEN " + quoted_channel(s, channel));
                break;
            } catch (const error& e) {
                if (s.closed)
                    throw_closed();
                if (!is_connection_error(e) || tries >= 2)
                    throw;
                mark_lost(s, e.what());
            }
        }
        if (std::find(s.channels.begin(), s.channels.end(), channel) == s.channels.end())
            s.channels.push_back(channel);
    } catch (const boost::system::system_error&) {
        rethrow_as_pgco();
    }
}

// UNLISTEN needs no connection: a lost session took its subscriptions with it.
asio::awaitable<void> unlisten_impl(std::shared_ptr<listener_state> sp,
                                    std::optional<std::string> channel)
{
    listener_state& s = *sp;
    if (channel)
        validate_channel(*channel);
    try {
        co_await begin_command(s);
        command_guard guard{s};
        bool subscribed = !channel || std::find(s.channels.begin(), s.channels.end(), *channel) !=
                                          s.channels.end();
        if (subscribed && detail::impl_of(s.conn).conn) {
            try {
                std::string sql =
                    channel ? "UNLISTEN " + quoted_channel(s, *channel) : std::string("UNLISTEN *");
                co_await run_command(s, std::move(sql));
            } catch (const error& e) {
                if (s.closed)
                    throw_closed();
                if (!is_connection_error(e))
                    throw;
                mark_lost(s, e.what());
            }
        }
        auto gone = [&](const std::string& name) { return !channel || name == *channel; };
        std::erase_if(s.channels, gone);
        std::erase_if(s.queue, [&](const notification& n) { return gone(n.channel); });
    } catch (const boost::system::system_error&) {
        rethrow_as_pgco();
    }
}

asio::awaitable<std::optional<notification>>
next_impl(std::shared_ptr<listener_state> sp, std::optional<std::chrono::milliseconds> timeout)
{
    listener_state& s = *sp;
    if (s.closed)
        throw_closed();
    if (s.next_active)
        throw error(errc::connection_busy,
                    "another coroutine is already waiting for this listener's notifications");
    s.next_active = true;
    next_guard guard{s};
    asio::steady_timer deadline(s.ex);
    if (timeout)
        deadline.expires_after(*timeout);
    else
        deadline.expires_at(asio::steady_timer::time_point::max());

    try {
        for (;;) {
            if (s.closed)
                throw_closed();
            if (!s.queue.empty()) {
                notification n = std::move(s.queue.front());
                s.queue.pop_front();
                co_return n;
            }
            if (s.owner == owner_type::command) {
                // A LISTEN or UNLISTEN has the connection: wait until it is done.
                if (co_await wait_signal(s, deadline) == woke::deadline)
                    co_return std::nullopt;
                continue;
            }
            s.owner = owner_type::next;
            auto& impl = detail::impl_of(s.conn);
            if (!impl.conn) {
                if (!co_await restore(sp, deadline, false))
                    co_return std::nullopt;
                continue;
            }
            std::string why;
            if (!pump(s, why)) {
                mark_lost(s, why);
                continue;
            }
            if (!s.queue.empty())
                continue;

            // A command that waited while this wait was busy (reconnecting) may go ahead now.
            s.next_waiting = true;
            s.wake();
            auto [order, read_ec, signal_ec, deadline_ec] = co_await detail::first_of(
                impl.async_wait_readable(asio::deferred), s.signal.async_wait(asio::deferred),
                deadline.async_wait(asio::deferred));
            s.next_waiting = false;
            co_await check_interrupted(s);
            if (order[0] == 2 && !deadline_ec)
                co_return std::nullopt; // what arrives now is kept for the next call
            if (order[0] == 0 && read_ec && !detail::readable_anyway(read_ec) &&
                s.owner == owner_type::next) {
                mark_lost(s, read_ec.message());
                continue;
            }
            // Readable (pump reads it), or woken: a command may have taken the connection.
        }
    } catch (const boost::system::system_error&) {
        rethrow_as_pgco();
    }
}

// Without a deadline the wait only ends with a notification (or an exception).
asio::awaitable<notification> next_forever(std::shared_ptr<listener_state> sp)
{
    auto n = co_await next_impl(std::move(sp), std::nullopt);
    co_return std::move(*n);
}

} // namespace

listener::listener(executor_type ex, pool_options opts)
{
    // Channel names differ per LISTEN: caching them as prepared statements would only evict
    // useful entries.
    opts.statement_cache_size = 0;
    state_ = std::make_shared<detail::listener_state>(std::move(ex), std::move(opts));
}

listener::~listener()
{
    close();
}

listener::executor_type listener::get_executor() const noexcept
{
    return state_->ex;
}

asio::awaitable<void> listener::listen(std::string_view channel)
{
    return listen_impl(state_, std::string(channel));
}

asio::awaitable<void> listener::unlisten(std::string_view channel)
{
    return unlisten_impl(state_, std::string(channel));
}

asio::awaitable<void> listener::unlisten_all()
{
    return unlisten_impl(state_, std::nullopt);
}

asio::awaitable<notification> listener::next()
{
    return next_forever(state_);
}

asio::awaitable<std::optional<notification>> listener::next_for(std::chrono::milliseconds timeout)
{
    return next_impl(state_, timeout);
}

std::vector<std::string> listener::channels() const
{
    return state_->channels;
}

std::size_t listener::pending() const noexcept
{
    return state_->queue.size();
}

std::uint64_t listener::reconnects() const noexcept
{
    return state_->reconnects;
}

bool listener::is_connected() const noexcept
{
    return state_->conn.is_open();
}

int listener::backend_pid() const noexcept
{
    return state_->conn.backend_pid();
}

void listener::close() noexcept
{
    auto& s = *state_;
    if (s.closed)
        return;
    s.closed = true;
    if (!s.connecting) // a running connect is cancelled through the signal, then closed
        s.conn.close();
    s.queue.clear();
    s.wake();
}

bool listener::is_closed() const noexcept
{
    return state_->closed;
}

} // namespace pgco
