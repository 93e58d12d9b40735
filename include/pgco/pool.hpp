#pragma once

#include <pgco/batch.hpp>
#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/detail/pool_policy.hpp>
#include <pgco/retry.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

namespace pgco {

namespace detail {
struct pool_state;
} // namespace detail

/// Counters and gauges of a pool at one moment (see `pool::stats`).
struct pool_stats
{
    std::size_t open = 0;       ///< connections open: idle + in use + being checked
    std::size_t idle = 0;       ///< open and waiting in the pool
    std::size_t in_use = 0;     ///< handed out to callers
    std::size_t connecting = 0; ///< being opened now
    std::size_t waiting = 0;    ///< callers waiting in `acquire`

    std::uint64_t acquired = 0;               ///< successful acquires, ever
    std::uint64_t acquire_timeouts = 0;       ///< acquires that ran out of `pool_timeout`
    std::uint64_t connections_opened = 0;     ///< successful connects, ever
    std::uint64_t connections_closed = 0;     ///< connections closed for any reason
    std::uint64_t connect_failures = 0;       ///< connects that failed
    std::uint64_t closed_by_server = 0;       ///< idle connections found closed by the server
    std::uint64_t health_check_failures = 0;  ///< pings that failed or timed out
    std::uint64_t reconnects = 0;             ///< `reconnect()` calls carried out
    std::uint64_t query_retries = 0;          ///< queries repeated by the retry layer
    std::uint64_t statements_multiplexed = 0; ///< statements sent in shared pipelined batches
    std::uint64_t pipeline_batches = 0;       ///< such batches (one round trip each)

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

namespace detail {

/// Where a multiplexed statement's result is decoded as soon as it arrives, instead of being
/// kept until its batch's Sync: one result freed at once leaves libpq's memory to the next,
/// while hundreds held until the Sync drive every allocation down glibc's slow path. The pool
/// calls `take` under its lock, and only while the caller still waits; `ready` says a value
/// (or a decoding failure) is in the caller's hands.
struct early_result
{
    virtual void take(result& r) noexcept = 0;
    bool ready = false;

protected:
    ~early_result() = default;
};

/// `decode(r)`'s outcome, kept for the caller (see `early_result`).
template <class T, class Decode>
struct early_value final : early_result
{
    explicit early_value(Decode& d) noexcept : decode(d) {}

    void take(result& r) noexcept override
    {
        value.reset();
        failure = nullptr;
        try {
            value.emplace(decode(r));
        } catch (...) {
            failure = std::current_exception();
        }
        ready = true;
    }
    /// The value, or the decoding failure thrown as `decode` threw it.
    T get()
    {
        if (failure)
            std::rethrow_exception(failure);
        return std::move(*value);
    }

    Decode& decode;
    std::optional<T> value;
    std::exception_ptr failure;
};

/// The retry layer's loop around one statement or one transaction (state in the .cpp; the
/// loop itself sits in the templates below so that no callable needs type erasure).
class retry_loop
{
public:
    enum class verdict
    {
        retry,   ///< pause, then try again
        rethrow, ///< give the caller this error as it is
        give_up, ///< throw `final_error()`: attempts were made and all failed
    };

    retry_loop(std::shared_ptr<pool_state> s, retry_mode mode, bool transaction);

    /// A connection for the next try; connect failures surface at once (the loop owns the
    /// backoff) instead of being retried until `pool_timeout`.
    boost::asio::awaitable<pooled_connection> acquire();
    /// How `run` takes a statement (see `route_for`).
    enum class route
    {
        acquire,     ///< on a connection acquired from the pool
        with_permit, ///< on a connection of its own, the permit already taken
        queue,       ///< multiplexed: await `queued`, not `run`
    };
    /// Where one statement of the pool's query helpers goes: on a connection of its own when
    /// one is free at once (taking its permit), otherwise (with `multiplex`) into a pipelined
    /// batch with other callers' statements on a connection already at work.
    route route_for(std::string_view sql);
    /// Runs a statement routed `acquire` or `with_permit`.
    boost::asio::awaitable<result> run(route how, std::string_view sql, params_view params,
                                       binary_check binary);

    /// What a multiplexed statement's caller is resumed with.
    struct queued_outcome
    {
        std::exception_ptr failure;
        result res;
    };
    /// The caller's handler while its statement is queued: Asio's own, for co_await on the
    /// operation `queued` returns.
    using queued_handler =
        boost::asio::detail::awaitable_async_op_handler<void(queued_outcome),
                                                        boost::asio::any_io_executor>;
    struct queue_initiation
    {
        pool_state* s;
        std::string_view sql;
        params_view params;
        binary_check binary;
        early_result* early;
        void operator()(queued_handler handler) const;
    };
    /// A statement routed `queue`, as an operation to co_await directly: Asio 1.81 keeps its
    /// outcome in the awaiting frame (a use_awaitable operation allocates a frame of its own).
    /// `sql` and `params` live in the caller's frame until it is resumed: it copies them. With
    /// `early`, the result may be decoded into it on arrival; the result is then empty
    /// (`early->ready`).
    auto queued(std::string_view sql, params_view params, binary_check binary, early_result* early)
    {
        return boost::asio::async_initiate<const boost::asio::deferred_t&, void(queued_outcome)>(
            queue_initiation{state.get(), sql, params, binary, early}, boost::asio::deferred);
    }
    /// Records a failure and decides. Logs the story.
    verdict failed(const error& e);
    /// The error to throw after giving up: the last one, with every attempt listed.
    error final_error() const;
    /// Waits before the next attempt (Asio timer; the caller's cancellation ends it).
    boost::asio::awaitable<void> pause();
    /// Records success (logs it when there were retries).
    void succeeded() noexcept;

    std::shared_ptr<pool_state> state;

private:
    retry_mode mode_;
    bool transaction_;
    unsigned retries_ = 0;
    pool_clock::time_point start_;
    std::chrono::milliseconds next_pause_{0};
    std::vector<std::string> history_;
    std::optional<error> last_;
    bool any_maybe_applied_ = false;
};

boost::asio::awaitable<void> begin_transaction(connection& c);
/// COMMITs; if the answer is lost after COMMIT was sent, gives the broken connection back and
/// asks the server on another (txid_status) whether the transaction committed, instead of
/// guessing.
boost::asio::awaitable<void> commit_transaction(retry_loop& loop, pooled_connection& c);
boost::asio::awaitable<void> rollback_quietly(connection& c) noexcept;

template <class A>
struct awaitable_value;
template <class T, class E>
struct awaitable_value<boost::asio::awaitable<T, E>>
{
    using type = T;
};

} // namespace detail

/// The statements of one transaction, all on one pooled connection (see `pool::transaction`).
class transaction
{
public:
    /// Runs a statement inside the transaction and maps every row to `Row`.
    template <class Row, class... Params>
    boost::asio::awaitable<std::vector<Row>> query(std::string_view sql, const Params&... params)
    {
        return conn_.query<Row>(sql, params...);
    }
    /// Runs a statement inside the transaction and maps its first row to `Row`.
    template <class Row, class... Params>
    boost::asio::awaitable<Row> query_one(std::string_view sql, const Params&... params)
    {
        return conn_.query_one<Row>(sql, params...);
    }
    /// Runs a statement inside the transaction; returns the rows it affected.
    template <class... Params>
    boost::asio::awaitable<std::uint64_t> execute(std::string_view sql, const Params&... params)
    {
        return conn_.execute(sql, params...);
    }
    /// The underlying connection.
    connection& conn() noexcept { return conn_; }

private:
    friend class pool;
    explicit transaction(connection& c) noexcept : conn_(c) {}
    connection& conn_;
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
/// several threads. Its state lives until the last borrowed connection is returned, so handles
/// may outlive the pool object.
///
/// Lifetime: while open, the pool keeps background work (maintenance timer, idle watches) on
/// its executor, so `io_context::run()` returns only after `close()` (or the destructor).
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

    /// Runs one statement on a pooled connection and maps every row to `Row`. Connection
    /// failures are retried under `options().retry` where that cannot apply the statement
    /// twice; pass `pgco::idempotent` first to allow more, `pgco::no_retry` to allow none.
    template <class Row, class... Params>
    boost::asio::awaitable<std::vector<Row>> query(std::string_view sql, const Params&... params)
    {
        return query<Row>(retry_mode::automatic, sql, params...);
    }
    template <class Row, class... Params>
    boost::asio::awaitable<std::vector<Row>> query(retry_mode mode, std::string_view sql,
                                                   const Params&... params)
    {
        return statement<std::vector<Row>>(
            mode, sql, [](result& r) { return r.template as<Row>(); },
            &detail::binary_row_safe<Row>, params...);
    }

    /// Runs one statement and maps its first row to `Row` (`errc::no_rows` if none); retried
    /// like `query`.
    template <class Row, class... Params>
    boost::asio::awaitable<Row> query_one(std::string_view sql, const Params&... params)
    {
        return query_one<Row>(retry_mode::automatic, sql, params...);
    }
    template <class Row, class... Params>
    boost::asio::awaitable<Row> query_one(retry_mode mode, std::string_view sql,
                                          const Params&... params)
    {
        return statement<Row>(
            mode, sql,
            [](result& r) {
                if (r.empty())
                    throw error(errc::no_rows, "the query returned no rows");
                return r.template row_as<Row>(0);
            },
            &detail::binary_row_safe<Row>, params...);
    }

    /// Runs one statement and returns the number of rows it affected; retried like `query`.
    template <class... Params>
    boost::asio::awaitable<std::uint64_t> execute(std::string_view sql, const Params&... params)
    {
        return execute(retry_mode::automatic, sql, params...);
    }
    template <class... Params>
    boost::asio::awaitable<std::uint64_t> execute(retry_mode mode, std::string_view sql,
                                                  const Params&... params)
    {
        return statement<std::uint64_t>(
            mode, sql, [](result& r) { return r.rows_affected(); }, nullptr, params...);
    }

    /// Runs `fn(tx)` between BEGIN and COMMIT on one connection and returns what it returns.
    ///
    /// `fn` is a callable taking `pgco::transaction&` and returning an awaitable. If it
    /// throws, the transaction is rolled back. After a serialization failure or deadlock
    /// (40001, 40P01), or a connection failure before COMMIT was sent, the whole function is
    /// replayed from BEGIN under `options().retry`: so `fn` may run more than once, and should
    /// do nothing but database work. If the connection is lost after COMMIT was sent, the
    /// transaction's id (recorded before COMMIT) is looked up after reconnecting: committed
    /// means success, rolled back means replay, and only when the server cannot tell does it
    /// fail, with `errc::commit_outcome_unknown`.
    template <class F>
    auto transaction(F fn) -> boost::asio::awaitable<
        typename detail::awaitable_value<std::invoke_result_t<F&, pgco::transaction&>>::type>
    {
        using value_type =
            typename detail::awaitable_value<std::invoke_result_t<F&, pgco::transaction&>>::type;
        detail::retry_loop loop(state_, retry_mode::automatic, true);
        for (;;) {
            auto verdict = detail::retry_loop::verdict::rethrow;
            std::exception_ptr failure;
            pooled_connection c;
            try {
                c = co_await loop.acquire();
                co_await detail::begin_transaction(*c);
                pgco::transaction tx(*c);
                if constexpr (std::is_void_v<value_type>) {
                    co_await fn(tx);
                    co_await detail::commit_transaction(loop, c);
                    loop.succeeded();
                    co_return;
                } else {
                    value_type value = co_await fn(tx);
                    co_await detail::commit_transaction(loop, c);
                    loop.succeeded();
                    co_return value;
                }
            } catch (const error& e) {
                verdict = loop.failed(e);
                failure = std::current_exception();
            } catch (...) {
                failure = std::current_exception();
            }
            if (c) {
                // After cancellation every co_await throws; the connection, still inside the
                // transaction, is closed on release instead of rolled back.
                auto cs = co_await boost::asio::this_coro::cancellation_state;
                if (cs.cancelled() == boost::asio::cancellation_type::none)
                    co_await detail::rollback_quietly(*c);
            }
            c.release();
            throw_unless_retry(loop, verdict, failure);
            co_await loop.pause();
        }
    }

    /// Runs the statements of `b` in one round trip on one pooled connection, as one implicit
    /// transaction (see `pgco::batch`). Retried under `options().retry` like a single
    /// statement: a batch lost before the server reported it aborted or committed is repeated
    /// only with `pgco::idempotent`.
    boost::asio::awaitable<std::vector<result>> pipeline(batch& b,
                                                         retry_mode mode = retry_mode::automatic);

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
    /// Runs one statement under the retry policy and turns its result into `T` with `decode`.
    /// `sql` and `params` refer to the caller's arguments, which live until the caller's
    /// co_await completes.
    template <class T, class Decode, class... Params>
    boost::asio::awaitable<T> statement(retry_mode mode, std::string_view sql, Decode decode,
                                        detail::binary_check binary, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        detail::retry_loop loop(state_, mode, false);
        detail::early_value<T, Decode> early(decode);
        for (;;) {
            auto verdict = detail::retry_loop::verdict::rethrow;
            std::exception_ptr failure;
            try {
                early.ready = false;
                result r;
                auto how = loop.route_for(sql);
                if (how == detail::retry_loop::route::queue) {
                    auto outcome = co_await loop.queued(sql, pack.view(), binary, &early);
                    if (outcome.failure)
                        std::rethrow_exception(outcome.failure);
                    r = std::move(outcome.res);
                } else {
                    r = co_await loop.run(how, sql, pack.view(), binary);
                }
                T value = early.ready ? early.get() : decode(r);
                loop.succeeded();
                co_return value;
            } catch (const error& e) {
                verdict = loop.failed(e);
                failure = std::current_exception();
            }
            // No co_await before rethrowing: after cancellation it would throw instead.
            throw_unless_retry(loop, verdict, failure);
            co_await loop.pause();
        }
    }

    /// Rethrows or gives up, as `verdict` says; returns if the work is to be tried again.
    static void throw_unless_retry(detail::retry_loop& loop, detail::retry_loop::verdict verdict,
                                   std::exception_ptr failure);

    std::shared_ptr<detail::pool_state> state_;
};

} // namespace pgco
