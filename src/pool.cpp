#include "connection_impl.hpp"
#include "first_of.hpp"
#include "ring_queue.hpp"
#include "spare_vector.hpp"

#include <pgco/log.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <mutex>
#include <random>
#include <span>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace pgco {
namespace detail {

// ---- time-dependent decisions (pool_policy.hpp) ----

pool_clock::time_point retire_deadline(pool_clock::time_point created,
                                       std::chrono::milliseconds max_lifetime, double jitter)
{
    if (max_lifetime.count() <= 0)
        return pool_clock::time_point::max();
    auto shortened = std::chrono::duration_cast<std::chrono::milliseconds>(
        max_lifetime * (1.0 - 0.025 * std::clamp(jitter, 0.0, 1.0)));
    return created + shortened;
}

idle_action decide_idle(const conn_meta& m, pool_clock::time_point now, const pool_options& o,
                        bool above_min_idle, bool callers_waiting)
{
    if (now >= m.retire_at)
        return idle_action::retire_lifetime;
    if (o.idle_timeout.count() > 0 && above_min_idle && now - m.last_used >= o.idle_timeout)
        return idle_action::retire_idle;
    if (o.health_check_interval.count() > 0 && !callers_waiting &&
        now - std::max(m.last_used, m.last_checked) >= o.health_check_interval)
        return idle_action::ping;
    return idle_action::keep;
}

std::chrono::milliseconds connect_backoff(unsigned failed_attempts)
{
    auto ms = 50ms * (1u << std::min(failed_attempts, 5u));
    return std::min<std::chrono::milliseconds>(ms, 1s);
}

std::chrono::microseconds percentile(std::vector<std::chrono::microseconds> samples, double p)
{
    if (samples.empty())
        return {};
    auto rank = static_cast<std::size_t>(std::clamp(p, 0.0, 1.0) * (samples.size() - 1) + 0.5);
    std::nth_element(samples.begin(), samples.begin() + rank, samples.end());
    return samples[rank];
}

std::string pool_timeout_message(const pool_options& o, std::size_t open, std::size_t in_use,
                                 std::size_t waiting, const std::string& last_connect_error)
{
    std::string msg = "P2024: timed out fetching a connection from the pool (connection_limit=" +
                      std::to_string(o.connection_limit) +
                      ", pool_timeout=" + std::to_string(o.pool_timeout.count()) + " ms): ";
    if (!last_connect_error.empty())
        return msg + "the database could not be reached: " + last_connect_error;
    return msg + "all connections are busy (" + std::to_string(open) + " open, " +
           std::to_string(in_use) + " in use, " + std::to_string(waiting) + " waiting)";
}

// ---- the shared state ----

namespace {

using permit_channel = asio::experimental::concurrent_channel<void(boost::system::error_code)>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

/// A one-shot event many coroutines can await from any thread: `fire()` closes the channel,
/// which completes every pending and future receive.
struct event
{
    explicit event(const asio::any_io_executor& ex) : ch(ex) {}
    void fire() { ch.close(); }
    asio::awaitable<void> wait() { co_await ch.async_receive(use_tuple); }
    permit_channel ch;
};

} // namespace

/// The caller of a multiplexed statement, suspended until its outcome is known: Asio's own
/// handler for `co_await` on the deferred operation `retry_loop::queued` returns, completing
/// with `void(queued_outcome)`. Storing it directly (no channel per statement) saves a lock, a
/// queue and an allocation per statement.
using mux_handler = retry_loop::queued_handler;

/// A caller to resume, with what to resume it with.
struct mux_completion
{
    mux_handler handler;
    std::exception_ptr failure;
    result res;

    void operator()()
    {
        std::move(handler)(retry_loop::queued_outcome{std::move(failure), std::move(res)});
    }
};

/// A statement waiting to share a connection (multiplexing). Its text and parameters are
/// copied: the caller may be cancelled, and its frame destroyed, while a batch is being sent.
struct mux_item
{
    void copy(std::string_view sql, const params_view& p, binary_check binary)
    {
        statement.assign(sql, p);
        entry.key = statement.key;
        entry.sql_length = statement.sql_length;
        entry.params = statement.view();
        entry.binary = binary;
    }

    owned_statement statement;
    batch_entry entry; // the outcome, once `finished`
    pool_clock::time_point queued;
    pool_state* owner = nullptr; // for the entry's sink; outlives every batch the item is in
    // Under pool_state::mu:
    bool taken = false, abandoned = false, finished = false;
    std::optional<mux_handler> waiter; // the caller, until finished
    early_result* early = nullptr;     // in the caller's frame, while it waits
};

/// The entry's sink (see `early_result`).
void take_early(void* ctx, result& r) noexcept;

struct pooled_entry
{
    std::unique_ptr<connection> conn;
    conn_meta meta;
    std::uint64_t watch = 0; // generation of the idle watch armed (or about to be) on it
    bool armed = false;      // a wait is registered on the socket
};

inline std::size_t connect_limit(const pool_options& o)
{
    return std::clamp<std::size_t>(o.max_connecting, 1, o.connection_limit);
}

struct pool_state : std::enable_shared_from_this<pool_state>
{
    pool_state(asio::any_io_executor e, pool_options o)
        : ex(std::move(e)), opts(std::move(o)), permits(ex, opts.connection_limit),
          connect_slots(ex, connect_limit(opts)), monitor_timer(ex), rng(std::random_device{}())
    {
        for (std::size_t i = 0; i < opts.connection_limit; ++i)
            permits.try_send(boost::system::error_code{});
        for (std::size_t i = 0; i < connect_limit(opts); ++i)
            connect_slots.try_send(boost::system::error_code{});
        idle.reserve(opts.connection_limit);
        waits.reserve(wait_window);
        target = opts.redacted();
    }

    asio::any_io_executor ex;
    const pool_options opts;
    std::string target;
    // One permit per connection that may be open: held by every borrowed connection, every
    // connect in progress and every health check. Idle connections hold none; a caller that
    // receives a permit takes an idle connection or opens one. The channel queues receivers in
    // order, so waiters are served first come, first served.
    permit_channel permits;
    // One slot per connect allowed at once (`max_connecting`), taken after the permit.
    permit_channel connect_slots;
    asio::steady_timer monitor_timer; // touched only by the monitor and under `mu`

    mutable std::mutex mu;          // guards everything below
    std::vector<pooled_entry> idle; // a stack: the most recently used is reused first
    std::size_t in_use = 0, connecting = 0, checking = 0, waiting = 0;
    bool closing = false;
    std::uint64_t epoch = 0, next_watch = 0;
    std::string last_connect_error; // cleared by the next successful connect
    pool_stats counters;
    static constexpr std::size_t wait_window = 1024;
    std::vector<std::chrono::microseconds> waits; // the latest acquire waits, a ring
    std::size_t waits_next = 0;
    std::minstd_rand rng;
    ring_queue<std::shared_ptr<mux_item>> mux_queue; // statements waiting to share a connection
    // !mux_queue.empty(), readable without the lock: a caller who finds statements queued
    // joins them instead of trying for a permit of its own (which those are waiting for).
    std::atomic<bool> mux_pending{false};
    void queue_changed_locked() noexcept
    {
        mux_pending.store(!mux_queue.empty(), std::memory_order_relaxed);
    }
    std::vector<std::shared_ptr<mux_item>> spare_items; // finished, ready for reuse
    bool sweeping = false;                 // a sweep coroutine enforces pool_timeout on the queue
    std::shared_ptr<event> reconnect_done; // set while a reconnect runs
    std::shared_ptr<event> close_done;     // set once close() starts
    std::unique_ptr<asio::signal_set> signals;

    std::size_t open_locked() const { return idle.size() + in_use + checking; }

    void record_wait_locked(pool_clock::duration d)
    {
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(d);
        if (waits.size() < wait_window)
            waits.push_back(us);
        else
            waits[waits_next] = us;
        waits_next = (waits_next + 1) % wait_window;
    }

    void release_permit() { put_back(permits); }

    /// Returns a token (a permit, a connect slot) to its channel.
    static void put_back(permit_channel& ch)
    {
        // Boost 1.81's buffered channel forgets it has room after its last waiting receiver is
        // cancelled (an acquire timing out): try_send then refuses. A blocked send still hands
        // the token to the next receiver, so nothing is lost; closing the channel ends it.
        if (!ch.try_send(boost::system::error_code{}))
            ch.async_send(boost::system::error_code{}, [](boost::system::error_code) {});
    }

    /// Closes a connection on the executor rather than on the caller's path.
    void close_later(std::unique_ptr<connection> c)
    {
        if (!c)
            return;
        {
            std::lock_guard lock(mu);
            ++counters.connections_closed;
        }
        asio::post(ex, [c = std::move(c)]() mutable { c->close(); });
    }

    // ---- idle watch ----

    /// Watches an idle connection's socket: input while idle means the server closed it (EOF,
    /// or a FATAL message first) or sent something harmless (a notice). Called under `mu`.
    void arm_watch_locked(pooled_entry& e)
    {
        auto& impl = impl_of(*e.conn);
        e.watch = ++next_watch;
        e.armed = true;
        impl.async_wait_readable(
            [w = weak_from_this(), gen = e.watch](boost::system::error_code ec) {
                if (auto self = w.lock())
                    self->on_idle_input(gen, ec);
            });
    }

    /// Arms the watch a moment later: a caller that takes the connection straight back (a loop
    /// of queries) never pays for registering and cancelling a wait. Called under `mu`.
    void schedule_watch_locked(pooled_entry& e)
    {
        e.watch = ++next_watch;
        asio::post(ex, [w = weak_from_this(), gen = e.watch] {
            auto self = w.lock();
            if (!self)
                return;
            std::lock_guard lock(self->mu);
            auto it = std::find_if(self->idle.begin(), self->idle.end(),
                                   [gen](const pooled_entry& e) { return e.watch == gen; });
            if (it != self->idle.end() && !it->armed)
                self->arm_watch_locked(*it);
        });
    }

    void on_idle_input(std::uint64_t gen, boost::system::error_code ec)
    {
        std::unique_ptr<connection> dead;
        {
            std::lock_guard lock(mu);
            auto it = std::find_if(idle.begin(), idle.end(),
                                   [gen](const pooled_entry& e) { return e.watch == gen; });
            if (it == idle.end())
                return; // taken out of the pool since; the wait was cancelled for that
            auto& impl = impl_of(*it->conn);
            if (ec == asio::error::operation_aborted)
                return;
            if (impl.alive_after_idle_input()) {
                arm_watch_locked(*it);
                return;
            }
            dead = std::move(it->conn);
            idle.erase(it);
            ++counters.closed_by_server;
        }
        logger()->info("Idle connection closed by the server; dropped it from the pool");
        close_later(std::move(dead));
    }

    /// Takes an entry out of the idle set (under `mu`) and stops watching it.
    pooled_entry take_idle_locked()
    {
        pooled_entry e = std::move(idle.back());
        idle.pop_back();
        e.watch = 0;
        if (std::exchange(e.armed, false))
            impl_of(*e.conn).sock.cancel();
        return e;
    }

    /// Puts a connection back into the idle set, or closes it if it is not fit or not wanted.
    void give_back(std::unique_ptr<connection> c, conn_meta meta, bool borrowed)
    {
        auto now = pool_clock::now();
        bool keep = impl_of(*c).reusable() && now < meta.retire_at;
        {
            std::lock_guard lock(mu);
            (borrowed ? in_use : checking) -= 1;
            keep = keep && !closing && meta.epoch == epoch;
            if (keep) {
                meta.last_used = borrowed ? now : meta.last_used;
                idle.push_back({std::move(c), meta});
                schedule_watch_locked(idle.back());
            }
        }
        if (!keep)
            close_later(std::move(c));
        release_permit();
        kick_mux();
    }

    // ---- multiplexing ----

    /// Marks `item` finished (its outcome is in `entry`, or it was abandoned) and, if its
    /// caller still waits, takes the caller's handler with the outcome, and keeps the item for
    /// the next statement. Under `mu`.
    void finish_locked(const std::shared_ptr<mux_item>& item, std::vector<mux_completion>& resume)
    {
        item->finished = true;
        auto* early = std::exchange(item->early, nullptr);
        if (!item->waiter)
            return;
        mux_completion c{std::move(*item->waiter), nullptr, result()};
        item->waiter.reset();
        if (item->entry.err) {
            c.failure = std::make_exception_ptr(std::move(*item->entry.err));
        } else if (item->entry.res) {
            if (early) // decoded by an earlier, rolled-back run: this result counts
                early->ready = false;
            c.res = std::move(*item->entry.res);
        } else if (!item->entry.consumed) { // else the caller's early_result holds it
            c.failure = std::make_exception_ptr(
                error(errc::client_failure, "the statement's batch ended without its result"));
        }
        resume.push_back(std::move(c));
        recycle_locked(item);
    }

    /// Resumes callers whose statements finished: one posted function for all of them rather
    /// than one wake-up each. Each resumes on its own executor (at once when that is the one
    /// running the function).
    void resume_callers(spare_vector<mux_completion> completions)
    {
        if (!completions->empty())
            asio::post(
                ex, [completions = std::move(completions)]() mutable { resume_now(*completions); });
    }

    /// True if `e` is a plain io_context executor and this thread runs that io_context: then
    /// a handler for `e` may be invoked at once. Dispatching through `any_io_executor` would
    /// do the same, after wrapping the handler in an allocated function object.
    static bool runs_here(const asio::any_io_executor& e) noexcept
    {
        using plain = asio::io_context::basic_executor_type<std::allocator<void>, 0>;
        using tracked = asio::io_context::basic_executor_type<std::allocator<void>, 4>;
        if (auto* p = e.target<plain>())
            return p->running_in_this_thread();
        if (auto* t = e.target<tracked>())
            return t->running_in_this_thread();
        return false;
    }

    static void resume_now(std::vector<mux_completion>& completions)
    {
        for (std::size_t i = 0; i < completions.size(); ++i) {
            try {
                auto h_ex = asio::get_associated_executor(completions[i].handler);
                if (runs_here(h_ex))
                    completions[i](); // what dispatch does, without wrapping it in a function
                else
                    asio::dispatch(h_ex, std::move(completions[i]));
            } catch (...) {
                // A completion handler threw (out of io_context::run, as usual): the callers
                // after it are still resumed, in a function of their own.
                std::vector<mux_completion> rest(
                    std::make_move_iterator(completions.begin() + i + 1),
                    std::make_move_iterator(completions.end()));
                if (!rest.empty()) {
                    auto rest_ex = asio::get_associated_executor(rest.front().handler);
                    asio::post(rest_ex, [rest = std::move(rest)]() mutable { resume_now(rest); });
                }
                throw;
            }
        }
    }

    /// Completes `items` (outcomes already in their entries).
    void finish(std::span<const std::shared_ptr<mux_item>> items)
    {
        spare_vector<mux_completion> resume;
        resume->reserve(items.size());
        {
            std::lock_guard lock(mu);
            for (auto& item : items)
                finish_locked(item, *resume);
        }
        resume_callers(std::move(resume));
    }

    /// The caller's cancellation: unless its statement finished already, the caller stops
    /// waiting at once; the statement, if a runner took it, may still run.
    void cancel_mux(const std::shared_ptr<mux_item>& item)
    {
        std::optional<mux_handler> h;
        bool sent = false;
        {
            std::lock_guard lock(mu);
            if (item->finished || !item->waiter)
                return;
            item->abandoned = true;
            item->finished = true;
            item->early = nullptr; // its frame may go once it is resumed
            sent = item->taken;
            h.emplace(std::move(*item->waiter));
            item->waiter.reset();
        }
        mux_completion c{std::move(*h),
                         std::make_exception_ptr(error(errc::cancelled, "the query was cancelled",
                                                       {}, {}, {}, {}, sent)),
                         result()};
        auto h_ex = asio::get_associated_executor(c.handler);
        asio::post(h_ex, std::move(c));
    }

    /// Starts a runner if statements wait and a permit is free. Called after every change that
    /// may make that true (an item queued, a permit released), so that one side always sees
    /// the other.
    void kick_mux()
    {
        {
            std::lock_guard lock(mu);
            if (mux_queue.empty() || closing)
                return;
        }
        if (!permits.try_receive([](auto) {}))
            return; // every permit is held: its holder kicks when it gives it back
        asio::co_spawn(ex, run_mux(shared_from_this()), asio::detached);
    }

    /// Holds one permit and serves the queue in pipelined batches on one connection, until
    /// the queue is empty, the connection breaks, or a caller waits in `acquire` (who then gets
    /// the connection: exclusive users are not starved by shared ones).
    static asio::awaitable<void> run_mux(std::shared_ptr<pool_state> s)
    {
        pooled_connection c;
        bool permit = true;
        std::vector<std::shared_ptr<mux_item>> batch;
        std::vector<batch_entry*> entries;
        batch.reserve(s->opts.pipeline_depth);
        for (;;) {
            batch.clear();
            bool yield = false;
            {
                std::lock_guard lock(s->mu);
                while (!s->mux_queue.empty() && batch.size() < s->opts.pipeline_depth) {
                    auto item = std::move(s->mux_queue.front());
                    s->mux_queue.pop_front();
                    if (item->abandoned)
                        continue;
                    item->taken = true;
                    batch.push_back(std::move(item));
                }
                s->queue_changed_locked();
                yield = s->waiting > 0 || s->closing;
            }
            if (batch.empty())
                break;
            if (!c) {
                std::optional<error> failed;
                try {
                    auto now = pool_clock::now();
                    auto deadline = s->opts.pool_timeout.count() > 0
                                        ? now + s->opts.pool_timeout
                                        : pool_clock::time_point::max();
                    c = co_await with_permit(s, now, deadline, true);
                } catch (const error& e) {
                    failed = e;
                }
                if (failed) { // with_permit gave the permit back
                    permit = false;
                    for (auto& item : batch)
                        item->entry.err = *failed;
                    s->finish(batch);
                    break;
                }
            }
            entries.clear();
            for (auto& item : batch)
                entries.push_back(&item->entry);
            std::optional<error> failed;
            try {
                co_await run_batch(shared_impl_of(*c), entries);
            } catch (const error& e) {
                failed = e;
            }
            std::size_t reruns = 0;
            spare_vector<mux_completion> resume;
            // The batch's largest size (within what the stock keeps), not its own: the
            // recycled buffer is then allocated once, rather than grown (and freed at each
            // size) over the first batches.
            resume->reserve(std::max(batch.size(), std::min(s->opts.pipeline_depth,
                                                            spare_vector<mux_completion>::kept)));
            {
                std::lock_guard lock(s->mu);
                ++s->counters.pipeline_batches;
                // Statements rolled back with the batch go to the front again, in order.
                for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
                    auto& item = **it;
                    if (failed || item.abandoned) {
                        item.entry.rerun = false; // finished below
                    } else if (item.entry.rerun) {
                        item.taken = false;
                        item.queued = pool_clock::now();
                        s->mux_queue.push_front(*it);
                        ++reruns;
                    }
                }
                s->queue_changed_locked();
                s->counters.statements_multiplexed += batch.size() - reruns;
                for (auto& item : batch) {
                    if (item->entry.rerun)
                        continue;
                    if (failed && !item->entry.err && !item->entry.res && !item->entry.consumed)
                        item->entry.err = *failed;
                    s->finish_locked(item, *resume);
                }
            }
            s->resume_callers(std::move(resume));
            if (!impl_of(*c).reusable()) {
                c.release(); // closes it, gives the permit back and kicks
                co_return;
            }
            // A connection past max_lifetime goes back (and is retired) even under constant
            // load; the next runner opens a fresh one.
            if (yield || pool_clock::now() >= c.meta_.retire_at)
                break;
            // Let the callers just completed queue their next statements, so that the next
            // batch is full rather than a straggler's alone.
            co_await asio::post(s->ex, asio::use_awaitable);
        }
        if (c) {
            c.release();
        } else if (permit) {
            s->release_permit();
            s->kick_mux();
        }
    }

    /// Fails statements that waited in the queue longer than pool_timeout without a runner
    /// taking them; runs while the queue is not empty.
    static asio::awaitable<void> sweep(std::shared_ptr<pool_state> s)
    {
        auto tick = std::clamp<std::chrono::milliseconds>(s->opts.pool_timeout / 10, 1ms, 50ms);
        asio::steady_timer t(s->ex);
        std::vector<std::shared_ptr<mux_item>> expired;
        for (;;) {
            t.expires_after(tick);
            co_await t.async_wait(use_tuple);
            expired.clear();
            std::optional<error> timeout;
            {
                std::lock_guard lock(s->mu);
                if (s->closing || s->mux_queue.empty()) {
                    s->sweeping = false;
                    co_return;
                }
                auto now = pool_clock::now();
                for (std::size_t i = 0; i < s->mux_queue.size(); ++i) {
                    auto& item = s->mux_queue[i];
                    if (item->taken || item->abandoned)
                        continue;
                    if (now - item->queued < s->opts.pool_timeout)
                        break; // the rest came later
                    item->abandoned = true;
                    expired.push_back(item);
                }
                if (!expired.empty())
                    timeout = s->timeout_error_locked();
            }
            for (auto& item : expired)
                item->entry.err = *timeout;
            s->finish(expired);
        }
    }

    /// Queues a statement to be multiplexed (see `retry_loop::run`) with the handler that
    /// resumes its caller, in one step under one lock: the statement is copied into a recycled
    /// item (the caller's frame may be gone before a runner sends it), and a runner on another
    /// thread never finds the item without its handler. A closed pool, too many waiting
    /// statements or SQL that cannot be sent complete the handler with the error instead.
    /// pool_timeout is the sweeper's: one timer for the whole queue, not one per statement.
    void enqueue(std::string_view sql, const params_view& params, binary_check binary,
                 mux_handler handler, early_result* early)
    {
        auto slot = asio::get_associated_cancellation_slot(handler);
        std::exception_ptr refused;
        {
            std::unique_lock lock(mu);
            // What may refuse the statement comes before the handler is taken.
            std::shared_ptr<mux_item> item;
            try {
                if (closing)
                    throw_closed();
                if (mux_queue.size() >= opts.max_waiters)
                    throw error(errc::pool_exhausted,
                                "too many statements are waiting for a pooled connection "
                                "(max_waiters=" +
                                    std::to_string(opts.max_waiters) + ")");
                if (!spare_items.empty()) {
                    item = std::move(spare_items.back());
                    spare_items.pop_back();
                } else {
                    item = std::make_shared<mux_item>();
                }
                item->copy(sql, params, binary); // throws (and drops the item) on bad SQL text
            } catch (...) {
                refused = std::current_exception();
            }
            if (!refused) {
                item->owner = this;
                if (early) {
                    item->entry.sink = &take_early;
                    item->entry.sink_ctx = item.get();
                }
                // Under the lock, like the queueing: a cancellation cannot fall between the two
                // (and be lost), nor can a runner finish the item before the slot is set.
                if (slot.is_connected())
                    slot.assign([w = weak_from_this(), item](asio::cancellation_type) {
                        if (auto self = w.lock())
                            self->cancel_mux(item);
                    });
                item->queued = pool_clock::now();
                item->waiter.emplace(std::move(handler));
                item->early = early;
                // Only the first statement queued needs to kick: while the queue is not empty,
                // a runner is on its way to it, or every permit is held and its release kicks.
                bool first = mux_queue.empty();
                mux_queue.push_back(std::move(item));
                queue_changed_locked();
                if (opts.pool_timeout.count() > 0 && !sweeping) {
                    sweeping = true;
                    asio::co_spawn(ex, sweep(shared_from_this()), asio::detached);
                }
                lock.unlock();
                if (first)
                    kick_mux();
                return;
            }
        }
        mux_completion c{std::move(handler), std::move(refused), result()};
        auto h_ex = asio::get_associated_executor(c.handler);
        asio::post(h_ex, std::move(c));
    }

    /// Keeps a finished item for the next statement. Not an abandoned one: the queue or a
    /// runner may still hold it. Under `mu`.
    void recycle_locked(const std::shared_ptr<mux_item>& item)
    {
        if (item->abandoned)
            return;
        item->entry.reset();
        item->taken = item->finished = false;
        if (spare_items.size() < 1024)
            spare_items.push_back(item);
    }

    // ---- acquiring ----

    /// Waits for a permit until `deadline`. True if one was received.
    asio::awaitable<bool> wait_permit(pool_clock::time_point deadline)
    {
        return wait_on(permits, deadline);
    }

    asio::awaitable<bool> wait_on(permit_channel& ch, pool_clock::time_point deadline)
    {
        if (deadline == pool_clock::time_point::max()) {
            auto [ec] = co_await ch.async_receive(use_tuple);
            co_return !ec;
        }
        asio::steady_timer timer(ex, deadline);
        auto [order, receive_ec, timer_ec] = co_await detail::first_of(
            ch.async_receive(asio::deferred), timer.async_wait(asio::deferred));
        // The receive can succeed even when the timer came first: then the permit is ours.
        if (!receive_ec)
            co_return true;
        if (timer_ec && !closing_now())
            throw error(errc::cancelled, "acquiring a connection was cancelled");
        co_return false;
    }

    bool closing_now() const
    {
        std::lock_guard lock(mu);
        return closing;
    }

    [[noreturn]] void throw_timeout()
    {
        std::lock_guard lock(mu);
        throw timeout_error_locked();
    }

    error timeout_error_locked()
    {
        ++counters.acquire_timeouts;
        auto msg = pool_timeout_message(opts, open_locked(), in_use, waiting, last_connect_error);
        logger()->warn("{}", msg);
        return error(errc::pool_timeout, msg);
    }

    [[noreturn]] static void throw_closed()
    {
        throw error(errc::pool_closed, "the pool is closed");
    }

    /// Opens a new connection while holding a permit, retrying failures that waiting may cure
    /// (refused, unreachable, starting up, too many clients) until `deadline`.
    asio::awaitable<std::unique_ptr<connection>> open_connection(pool_clock::time_point deadline,
                                                                 bool single_attempt = false)
    {
        for (unsigned failures = 0;; ++failures) {
            if (pool_clock::now() >= deadline)
                throw_timeout();
            // Waits for a turn among the `max_connecting` connects allowed at once.
            bool turn = connect_slots.try_receive([](auto) {});
            if (!turn)
                turn = co_await wait_on(connect_slots, deadline);
            if (!turn) {
                if (closing_now())
                    throw_closed();
                throw_timeout();
            }
            struct connect_slot
            {
                pool_state& s;
                explicit connect_slot(pool_state& state) : s(state)
                {
                    std::lock_guard lock(s.mu);
                    ++s.connecting;
                }
                ~connect_slot()
                {
                    {
                        std::lock_guard lock(s.mu);
                        --s.connecting;
                    }
                    put_back(s.connect_slots);
                }
            };
            std::optional<connect_slot> slot(std::in_place, *this);
            auto now = pool_clock::now();
            pool_options attempt = opts;
            if (deadline != pool_clock::time_point::max()) {
                if (now >= deadline)
                    throw_timeout();
                auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
                if (attempt.connect_timeout.count() == 0 || left < attempt.connect_timeout)
                    attempt.connect_timeout = left;
            }
            auto c = std::make_unique<connection>(ex);
            c->set_query_timeout(opts.query_timeout);
            if (deadline != pool_clock::time_point::max())
                impl_of(*c).connect_deadline = deadline;
            std::exception_ptr failure;
            try {
                co_await c->connect(std::move(attempt));
            } catch (const error& e) {
                bool curable = is_connection_error(e) ||
                               e.sqlstate() == "53300"; // too many clients: wait for a slot
                {
                    std::lock_guard lock(mu);
                    ++counters.connect_failures;
                    last_connect_error = e.what();
                }
                if (e.code() == errc::cancelled || !curable || single_attempt)
                    throw;
                logger()->warn("Connection attempt {} failed: {}", failures + 1, e.what());
                failure = std::current_exception();
            }
            slot.reset();
            if (!failure) {
                std::lock_guard lock(mu);
                ++counters.connections_opened;
                last_connect_error.clear();
                co_return c;
            }
            if (closing_now())
                throw_closed();
            // The last pause is cut to the time left, so a timeout comes at pool_timeout.
            asio::steady_timer t(ex,
                                 std::min(pool_clock::now() + connect_backoff(failures), deadline));
            co_await t.async_wait(asio::use_awaitable);
        }
    }

    conn_meta new_meta()
    {
        conn_meta m;
        m.created = m.last_used = m.last_checked = pool_clock::now();
        std::lock_guard lock(mu);
        m.epoch = epoch;
        m.retire_at = retire_deadline(m.created, opts.max_lifetime,
                                      std::uniform_real_distribution<double>(0, 1)(rng));
        return m;
    }

    // ---- background maintenance ----

    /// Pings an idle connection with its own deadline. False if it failed or took too long.
    asio::awaitable<bool> ping(connection& c)
    {
        asio::steady_timer timer(ex, opts.health_check_timeout);
        // Named before the co_await: GCC 12 destroys lambdas made inside a co_await expression
        // twice.
        auto select_one = [&c]() -> asio::awaitable<void> { co_await c.execute("SELECT 1"); };
        auto [order, ping_ex, timer_ec] = co_await detail::first_of(
            asio::co_spawn(ex, select_one, asio::deferred), timer.async_wait(asio::deferred));
        co_return order[0] == 0 && !ping_ex;
    }

    asio::awaitable<void> maintain()
    {
        auto now = pool_clock::now();
        std::vector<std::unique_ptr<connection>> retired;
        std::vector<pooled_entry> to_ping;
        {
            std::lock_guard lock(mu);
            if (closing)
                co_return;
            std::size_t open = open_locked();
            for (auto it = idle.begin(); it != idle.end();) {
                auto action = decide_idle(it->meta, now, opts, open > opts.min_idle, waiting > 0);
                if (action == idle_action::retire_lifetime || action == idle_action::retire_idle) {
                    it->watch = 0;
                    impl_of(*it->conn).sock.cancel();
                    retired.push_back(std::move(it->conn));
                    it = idle.erase(it);
                    --open;
                } else if (action == idle_action::ping && permits.try_receive([](auto) {})) {
                    it->watch = 0;
                    impl_of(*it->conn).sock.cancel();
                    ++checking;
                    to_ping.push_back(std::move(*it));
                    it = idle.erase(it);
                } else {
                    ++it;
                }
            }
        }
        if (!retired.empty())
            logger()->debug("Retiring {} idle connection(s) (lifetime or idle timeout)",
                            retired.size());
        for (auto& c : retired)
            close_later(std::move(c));

        for (auto& e : to_ping) {
            if (co_await ping(*e.conn)) {
                e.meta.last_checked = pool_clock::now();
                give_back(std::move(e.conn), e.meta, false);
                continue;
            }
            logger()->warn("Health check failed, reconnecting...");
            {
                std::lock_guard lock(mu);
                ++counters.health_check_failures;
                --checking;
            }
            close_later(std::move(e.conn));
            co_await refill(); // replace it, holding the permit the ping held
        }
        // Keep min_idle connections warm, one permit at a time.
        for (;;) {
            {
                std::lock_guard lock(mu);
                if (closing || open_locked() + connecting >= opts.min_idle)
                    break;
            }
            if (!permits.try_receive([](auto) {}))
                break;
            co_await refill();
        }
    }

    /// Opens one connection into the idle set using a permit the caller holds, and releases
    /// the permit. Failures are logged: the next acquire will try again.
    asio::awaitable<void> refill()
    {
        try {
            auto c =
                co_await open_connection(pool_clock::now() + std::max(opts.connect_timeout, 100ms));
            {
                std::lock_guard lock(mu);
                ++checking; // give_back's bookkeeping for a connection nobody borrowed
            }
            give_back(std::move(c), new_meta(), false);
        } catch (const std::exception& e) {
            logger()->warn("Could not open a replacement connection: {}", e.what());
            release_permit();
            kick_mux();
        }
    }

    /// Sleeps for `tick` on the monitor timer. The timer is shared with `shutdown_now`, which
    /// may run on another thread, so it is only touched under `mu`, the initiation included.
    auto monitor_sleep(std::chrono::milliseconds tick)
    {
        return asio::async_initiate<decltype(use_tuple), void(boost::system::error_code)>(
            [this, tick](auto handler) {
                std::lock_guard lock(mu);
                if (closing) {
                    asio::post(ex, [h = std::move(handler)]() mutable {
                        std::move(h)(asio::error::operation_aborted);
                    });
                    return;
                }
                monitor_timer.expires_after(tick);
                monitor_timer.async_wait(std::move(handler));
            },
            use_tuple);
    }

    static asio::awaitable<void> monitor(std::weak_ptr<pool_state> weak)
    {
        for (;;) {
            {
                // Hold the state only while working, never while sleeping: the monitor must not
                // keep a dropped pool alive.
                auto self = weak.lock();
                if (!self)
                    co_return;
                std::chrono::milliseconds tick = 1s;
                if (self->opts.health_check_interval.count() > 0)
                    tick = std::min(tick, self->opts.health_check_interval / 2 + 1ms);
                auto sleep = self->monitor_sleep(tick);
                self.reset();
                auto [ec] = co_await std::move(sleep);
                if (ec)
                    co_return;
            }
            auto self = weak.lock();
            if (!self)
                co_return;
            try {
                co_await self->maintain();
            } catch (const std::exception& e) {
                logger()->warn("Pool maintenance failed: {}", e.what());
            }
        }
    }

    /// With `single_attempt`, a failed connect is reported at once (the retry layer owns the
    /// backoff); otherwise connecting is retried until `pool_timeout`.
    static asio::awaitable<pooled_connection> acquire(std::shared_ptr<pool_state> s,
                                                      bool single_attempt = false)
    {
        auto start = pool_clock::now();
        auto deadline = s->opts.pool_timeout.count() > 0 ? start + s->opts.pool_timeout
                                                         : pool_clock::time_point::max();
        if (s->closing_now())
            s->throw_closed();

        if (!s->permits.try_receive([](auto) {})) {
            {
                std::lock_guard lock(s->mu);
                if (s->waiting >= s->opts.max_waiters)
                    throw error(
                        errc::pool_exhausted,
                        "too many callers are waiting for a pooled connection (max_waiters=" +
                            std::to_string(s->opts.max_waiters) + ")");
                ++s->waiting;
            }
            bool got = false;
            std::exception_ptr failure;
            try {
                got = co_await s->wait_permit(deadline);
            } catch (...) {
                failure = std::current_exception();
            }
            {
                std::lock_guard lock(s->mu);
                --s->waiting;
            }
            if (failure)
                std::rethrow_exception(failure);
            if (s->closing_now()) {
                if (got)
                    s->release_permit();
                s->throw_closed();
            }
            if (!got)
                s->throw_timeout();
        }

        co_return co_await with_permit(s, start, deadline, single_attempt);
    }

    /// Holding a permit: reuses an idle connection, or opens one. Gives the permit back if it
    /// fails.
    static asio::awaitable<pooled_connection> with_permit(std::shared_ptr<pool_state> s,
                                                          pool_clock::time_point start,
                                                          pool_clock::time_point deadline,
                                                          bool single_attempt)
    {
        for (;;) {
            pooled_entry e;
            {
                std::lock_guard lock(s->mu);
                if (s->closing) {
                    s->release_permit();
                    s->throw_closed();
                }
                if (s->idle.empty())
                    break;
                e = s->take_idle_locked();
                ++s->in_use;
            }
            auto& impl = impl_of(*e.conn);
            if (impl.reusable() && pool_clock::now() < e.meta.retire_at) {
                std::lock_guard lock(s->mu);
                ++s->counters.acquired;
                s->record_wait_locked(pool_clock::now() - start);
                co_return pooled_connection(s, std::move(e.conn), e.meta);
            }
            {
                std::lock_guard lock(s->mu);
                --s->in_use;
            }
            s->close_later(std::move(e.conn));
        }

        std::unique_ptr<connection> c;
        try {
            c = co_await s->open_connection(deadline, single_attempt);
        } catch (...) {
            s->release_permit();
            s->kick_mux();
            throw;
        }
        auto meta = s->new_meta();
        std::lock_guard lock(s->mu);
        if (s->closing) {
            s->release_permit();
            s->throw_closed();
        }
        ++s->in_use;
        ++s->counters.acquired;
        s->record_wait_locked(pool_clock::now() - start);
        logger()->debug("Pool opened connection ({} of {} open)", s->open_locked(),
                        s->opts.connection_limit);
        co_return pooled_connection(s, std::move(c), meta);
    }

    static asio::awaitable<void> close(std::shared_ptr<pool_state> s,
                                       std::chrono::milliseconds drain_timeout)
    {
        std::shared_ptr<event> done;
        bool first = false;
        {
            std::lock_guard lock(s->mu);
            if (!s->close_done) {
                s->close_done = std::make_shared<event>(s->ex);
                first = true;
            }
            done = s->close_done;
        }
        if (!first) {
            co_await done->wait();
            co_return;
        }
        logger()->info("Closing the pool: draining in-flight work (up to {} ms)",
                       drain_timeout.count());
        s->shutdown_now();
        // Borrowed connections come back as their holders finish; wait for them, bounded.
        auto deadline = pool_clock::now() + drain_timeout;
        asio::steady_timer t(s->ex);
        for (;;) {
            std::size_t busy;
            {
                std::lock_guard lock(s->mu);
                busy = s->in_use + s->connecting + s->checking;
            }
            if (busy == 0)
                break;
            if (pool_clock::now() >= deadline) {
                logger()->warn("{} connection(s) still busy after the drain timeout; they will be "
                               "closed when returned",
                               busy);
                break;
            }
            t.expires_after(5ms);
            co_await t.async_wait(use_tuple);
        }
        logger()->info("Pool closed");
        done->fire();
    }

    /// Stops everything at once (destructor path and end of close).
    void shutdown_now()
    {
        std::vector<pooled_entry> closing_idle;
        {
            std::lock_guard lock(mu);
            closing = true;
            monitor_timer.cancel();
            for (auto& e : idle)
                impl_of(*e.conn).sock.cancel();
            closing_idle.swap(idle);
            if (signals) {
                boost::system::error_code ignored;
                signals->cancel(ignored);
                signals->clear(ignored);
            }
        }
        ring_queue<std::shared_ptr<mux_item>> queued;
        {
            std::lock_guard lock(mu);
            queued.swap(mux_queue);
            queue_changed_locked();
        }
        std::vector<std::shared_ptr<mux_item>> closed_items;
        for (; !queued.empty(); queued.pop_front()) {
            auto& item = queued.front();
            item->entry.err = error(errc::pool_closed, "the pool is closed");
            closed_items.push_back(std::move(item));
        }
        finish(closed_items);
        permits.close(); // wakes every waiter; they find the pool closed
        connect_slots.close();
        for (auto& e : closing_idle)
            close_later(std::move(e.conn));
    }
};

// Decodes under the pool's lock, and only while the caller waits: a cancellation, which takes
// the lock too, cannot resume the caller (and let its frame go) meanwhile.
void take_early(void* ctx, result& r) noexcept
{
    auto& item = *static_cast<mux_item*>(ctx);
    std::lock_guard lock(item.owner->mu);
    if (item.early && item.waiter && !item.finished)
        item.early->take(r);
}

} // namespace detail

using detail::pool_clock;

// ---- pooled_connection ----

pooled_connection::pooled_connection(std::shared_ptr<detail::pool_state> pool,
                                     std::unique_ptr<connection> c,
                                     const detail::conn_meta& meta) noexcept
    : pool_(std::move(pool)), conn_(std::move(c)), meta_(meta)
{}

pooled_connection::pooled_connection(pooled_connection&& other) noexcept = default;

pooled_connection& pooled_connection::operator=(pooled_connection&& other) noexcept
{
    if (this != &other) {
        release();
        pool_ = std::move(other.pool_);
        conn_ = std::move(other.conn_);
        meta_ = other.meta_;
    }
    return *this;
}

pooled_connection::~pooled_connection()
{
    release();
}

void pooled_connection::release() noexcept
{
    if (!conn_ || !pool_)
        return;
    auto pool = std::move(pool_);
    try {
        pool->give_back(std::move(conn_), meta_, true);
    } catch (...) {
        // Only allocation can fail here; the connection is then simply dropped.
    }
}

// ---- pool ----

pool::pool(executor_type ex, pool_options opts)
    : state_(std::make_shared<detail::pool_state>(std::move(ex), std::move(opts)))
{
    if (state_->opts.connection_limit == 0)
        throw error(errc::invalid_configuration, "connection_limit must be at least 1");
    asio::co_spawn(state_->ex, detail::pool_state::monitor(state_), asio::detached);
    logger()->debug("Pool created for {} (connection_limit={})", state_->target,
                    state_->opts.connection_limit);
}

pool::~pool()
{
    state_->shutdown_now();
}

pool::executor_type pool::get_executor() const noexcept
{
    return state_->ex;
}

const pool_options& pool::options() const noexcept
{
    return state_->opts;
}

bool pool::is_closed() const noexcept
{
    std::lock_guard lock(state_->mu);
    return state_->closing;
}

asio::awaitable<pooled_connection> pool::acquire()
{
    return detail::pool_state::acquire(state_);
}

asio::awaitable<std::vector<result>> pool::pipeline(batch& b, retry_mode mode)
{
    detail::retry_loop loop(state_, mode, false);
    for (;;) {
        auto verdict = detail::retry_loop::verdict::rethrow;
        std::exception_ptr failure;
        try {
            auto c = co_await loop.acquire();
            auto results = co_await c->pipeline(b);
            loop.succeeded();
            co_return results;
        } catch (const error& e) {
            verdict = loop.failed(e);
            failure = std::current_exception();
        }
        throw_unless_retry(loop, verdict, failure);
        co_await loop.pause();
    }
}

asio::awaitable<bool> pool::is_connected(std::chrono::milliseconds timeout)
{
    auto s = state_;
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex, timeout);
    // Named before the co_await: GCC 12 destroys lambdas made inside a co_await expression
    // twice (here that would drop a reference to the pool state too many).
    auto check = [s]() -> asio::awaitable<void> {
        auto c = co_await detail::pool_state::acquire(s);
        co_await c->execute("SELECT 1");
    };
    auto [order, check_ex, timer_ec] = co_await detail::first_of(
        asio::co_spawn(ex, check, asio::deferred), timer.async_wait(asio::deferred));
    co_return order[0] == 0 && !check_ex;
}

asio::awaitable<void> pool::reconnect()
{
    auto s = state_;
    std::shared_ptr<detail::event> done;
    std::vector<detail::pooled_entry> old;
    {
        std::lock_guard lock(s->mu);
        if (s->closing)
            s->throw_closed();
        if (s->reconnect_done) {
            done = s->reconnect_done; // one is running: wait for it instead of starting another
        } else {
            s->reconnect_done = std::make_shared<detail::event>(s->ex);
            ++s->epoch;
            ++s->counters.reconnects;
            while (!s->idle.empty())
                old.push_back(s->take_idle_locked());
        }
    }
    if (done) {
        co_await done->wait();
        co_return;
    }
    logger()->info("Reconnecting: replacing {} idle connection(s); busy ones when returned",
                   old.size());
    for (auto& e : old)
        s->close_later(std::move(e.conn));
    // Open one fresh connection so the pool is warm again (and the database known to answer).
    if (s->permits.try_receive([](auto) {}))
        co_await s->refill();
    std::shared_ptr<detail::event> finished;
    {
        std::lock_guard lock(s->mu);
        finished = std::exchange(s->reconnect_done, nullptr);
    }
    finished->fire();
}

asio::awaitable<void> pool::close(std::chrono::milliseconds drain_timeout)
{
    return detail::pool_state::close(state_, drain_timeout);
}

void pool::close_on_signals(std::initializer_list<int> signal_numbers)
{
    auto s = state_;
    std::lock_guard lock(s->mu);
    if (s->closing)
        return;
    s->signals = std::make_unique<asio::signal_set>(s->ex);
    if (signal_numbers.size() == 0) {
        s->signals->add(SIGINT);
        s->signals->add(SIGTERM);
    }
    for (int n : signal_numbers)
        s->signals->add(n);
    s->signals->async_wait([w = std::weak_ptr(s)](boost::system::error_code ec, int signal) {
        auto self = w.lock();
        if (ec || !self)
            return;
        logger()->info("Signal {} received: closing the pool gracefully", signal);
        {
            std::lock_guard lock(self->mu);
            boost::system::error_code ignored;
            // Let a second signal have its usual effect.
            self->signals->clear(ignored);
        }
        asio::co_spawn(self->ex, detail::pool_state::close(self, std::chrono::seconds(10)),
                       asio::detached);
    });
}

pool_stats pool::stats() const
{
    std::lock_guard lock(state_->mu);
    pool_stats st = state_->counters;
    st.idle = state_->idle.size();
    st.in_use = state_->in_use;
    st.connecting = state_->connecting;
    st.waiting = state_->waiting;
    st.open = state_->open_locked();
    st.acquire_wait_p50 = detail::percentile(state_->waits, 0.5);
    st.acquire_wait_p99 = detail::percentile(state_->waits, 0.99);
    return st;
}

// ---- the retry layer ----

namespace detail {

namespace {

std::string describe(const error& e)
{
    std::string what = e.what();
    // std::system_error appends ": <category message>", which repeats what pgco said.
    auto tail = ": " + e.code().message();
    if (what.size() > tail.size() && what.ends_with(tail))
        what.resize(what.size() - tail.size());
    return what;
}

} // namespace

retry_loop::retry_loop(std::shared_ptr<pool_state> s, retry_mode mode, bool transaction)
    : state(std::move(s)), mode_(mode), transaction_(transaction)
{}

asio::awaitable<pooled_connection> retry_loop::acquire()
{
    auto c = co_await pool_state::acquire(state, true);
    if (retries_ > 0)
        logger()->info(transaction_ ? "Retrying transaction after reconnection..."
                                    : "Retrying query after reconnection...");
    co_return c;
}

namespace {

/// Gives a permit back unless disarmed: a coroutine that holds one as a parameter returns it
/// even if it is destroyed before it ever ran.
struct permit_guard
{
    explicit permit_guard(std::shared_ptr<pool_state> state) : s(std::move(state)) {}
    permit_guard(permit_guard&& other) noexcept = default;
    permit_guard& operator=(permit_guard&&) = delete;
    ~permit_guard()
    {
        if (s) {
            s->release_permit();
            s->kick_mux();
        }
    }
    void disarm() noexcept { s.reset(); }
    std::shared_ptr<pool_state> s;
};

asio::awaitable<result> run_with_permit(std::shared_ptr<pool_state> s, permit_guard permit,
                                        std::string_view sql, params_view params,
                                        binary_check binary)
{
    permit.disarm(); // with_permit owns it from here, and gives it back if it fails
    auto now = pool_clock::now();
    auto deadline = s->opts.pool_timeout.count() > 0 ? now + s->opts.pool_timeout
                                                     : pool_clock::time_point::max();
    auto c = co_await pool_state::with_permit(s, now, deadline, true);
    co_return co_await c->exec_params(sql, params, binary);
}

asio::awaitable<result> run_acquired(retry_loop& loop, std::string_view sql, params_view params,
                                     binary_check binary)
{
    auto c = co_await loop.acquire();
    co_return co_await c->exec_params(sql, params, binary);
}

} // namespace

retry_loop::route retry_loop::route_for(std::string_view sql)
{
    auto& s = state;
    if (!s->opts.multiplex || !shareable_statement(sql))
        return route::acquire;
    // A closed pool is refused by enqueue or with_permit.
    if (retries_ > 0)
        logger()->info("Retrying query after reconnection...");
    // A connection of its own when one is free at once: no batching delay for a lone caller.
    // Otherwise share.
    if (s->mux_pending.load(std::memory_order_relaxed) || !s->permits.try_receive([](auto) {}))
        return route::queue;
    return route::with_permit;
}

// Not a coroutine: the caller awaits the statement's coroutine directly.
asio::awaitable<result> retry_loop::run(route how, std::string_view sql, params_view params,
                                        binary_check binary)
{
    if (how == route::with_permit)
        return run_with_permit(state, permit_guard(state), sql, params, binary);
    return run_acquired(*this, sql, params, binary);
}

// Queued when awaited; never queued if the operation is dropped unawaited.
void retry_loop::queue_initiation::operator()(queued_handler handler) const
{
    s->enqueue(sql, params, binary, std::move(handler), early);
}

retry_loop::verdict retry_loop::failed(const error& e)
{
    const auto& policy = state->opts.retry;
    if (retries_ == 0)
        start_ = pool_clock::now();
    any_maybe_applied_ = any_maybe_applied_ || e.maybe_applied();
    history_.push_back(describe(e));
    last_ = e;

    bool retryable;
    if (transaction_) {
        // Before COMMIT was sent nothing of the transaction is kept, so replaying it from BEGIN
        // is safe after any connection failure; commit_transaction resolves a lost COMMIT
        // itself and reports only outcomes that must not be replayed.
        auto code = e.code();
        retryable = e.sqlstate() == "40001" || e.sqlstate() == "40P01" ||
                    (classify(e) != retry_decision::fail && code != errc::commit_outcome_unknown);
    } else {
        auto decision = classify(e);
        retryable = decision == retry_decision::retry ||
                    (decision == retry_decision::retry_if_idempotent &&
                     (mode_ == retry_mode::idempotent || policy.retry_all));
    }
    if (mode_ == retry_mode::never || policy.attempts == 0)
        retryable = false;

    auto l = logger();
    if (!retryable) {
        if (retries_ == 0) {
            if (is_connection_error(e) && classify(e) == retry_decision::retry_if_idempotent)
                l->warn("Connection lost after the query was sent; not retrying a statement "
                        "that may have run (mark it idempotent to allow it): {}",
                        history_.back());
            return verdict::rethrow;
        }
        l->warn("Connection attempt {}/{} failed: {}", retries_, policy.attempts, history_.back());
        return verdict::give_up;
    }
    if (retries_ == 0) {
        l->warn("Connection error detected, attempting to reconnect... ({})", history_.back());
    } else {
        l->warn("Connection attempt {}/{} failed: {}", retries_, policy.attempts, history_.back());
    }
    if (retries_ >= policy.attempts)
        return verdict::give_up;

    next_pause_ = policy.pause_before(retries_ + 1);
    if (policy.jitter > 0 && next_pause_.count() > 0) {
        thread_local std::minstd_rand rng{std::random_device{}()};
        auto extra = std::uniform_real_distribution<double>(0, policy.jitter)(rng);
        next_pause_ += std::chrono::duration_cast<std::chrono::milliseconds>(next_pause_ * extra);
    }
    if (policy.deadline.count() > 0 &&
        pool_clock::now() + next_pause_ >= start_ + policy.deadline) {
        l->warn("Retry deadline of {} ms reached", policy.deadline.count());
        return verdict::give_up;
    }
    ++retries_;
    {
        std::lock_guard lock(state->mu);
        ++state->counters.query_retries;
    }
    return verdict::retry;
}

error retry_loop::final_error() const
{
    std::string story = std::string(transaction_ ? "Transaction" : "Query") + " failed after " +
                        std::to_string(history_.size()) + " attempts:";
    for (std::size_t i = 0; i < history_.size(); ++i)
        story += " " + std::to_string(i + 1) + ") " + history_[i] + ";";
    story.pop_back();
    error e(static_cast<errc>(last_->code().value()), story, last_->sqlstate(),
            last_->server_message(), last_->detail(), last_->hint(), last_->request_sent());
    // If any attempt may have run, the statement as a whole may have.
    e.set_maybe_applied(any_maybe_applied_);
    return e;
}

asio::awaitable<void> retry_loop::pause()
{
    if (next_pause_.count() > 0) {
        logger()->info("Retrying in {}ms...", next_pause_.count());
        asio::steady_timer t(co_await asio::this_coro::executor, next_pause_);
        co_await t.async_wait(asio::use_awaitable);
    }
}

void retry_loop::succeeded() noexcept
{
    if (retries_ > 0) {
        try {
            logger()->info(transaction_ ? "Transaction succeeded after reconnection"
                                        : "Query succeeded after reconnection");
        } catch (...) {
        }
    }
}

asio::awaitable<void> begin_transaction(connection& c)
{
    co_await c.execute("BEGIN");
}

asio::awaitable<void> rollback_quietly(connection& c) noexcept
{
    if (!c.is_open())
        co_return;
    try {
        co_await c.execute("ROLLBACK");
    } catch (...) {
        // The pool closes a connection it finds inside a transaction anyway.
    }
}

asio::awaitable<void> commit_transaction(retry_loop& loop, pooled_connection& held)
{
    connection& c = *held;
    if (c.transaction_status() == connection::transaction_state::failed)
        throw error(errc::transaction_rolled_back,
                    "the transaction was rolled back: a statement in it failed");
    // Recorded before COMMIT: after a lost answer, the only way to learn the outcome. The xid
    // is NULL when the transaction wrote nothing, and then there is nothing to lose or to
    // double. The server's start time comes along because a server that crashed (or a standby
    // promoted in its place) hands out again the xids it never wrote to disk: after a restart
    // "committed" may be about somebody else's transaction.
    struct commit_marker
    {
        std::optional<std::int64_t> xid;
        std::string server_started;
    };
    auto marker = co_await c.query_one<commit_marker>(
        "SELECT txid_current_if_assigned(), pg_postmaster_start_time()::text");
    const auto& xid = marker.xid;
    std::optional<error> lost;
    try {
        auto res = co_await c.exec("COMMIT");
        if (res.command_status() == "ROLLBACK")
            throw error(errc::transaction_rolled_back,
                        "the transaction was rolled back: a statement in it failed");
        co_return;
    } catch (const error& e) {
        if (!e.maybe_applied() || !is_connection_error(e))
            throw; // COMMIT never reached the server, or the server said no: not committed
        lost = e;
    }
    // The link is gone; its permit is needed to ask on a new one (connection_limit may be 1).
    held.release();
    if (!xid)
        co_return;

    auto l = logger();
    l->warn("Connection lost after COMMIT was sent; asking the server whether transaction {} "
            "committed",
            *xid);
    const auto& policy = loop.state->opts.retry;
    std::string why = lost->what();
    unsigned in_progress_polls = 0;
    for (unsigned attempt = 0; attempt <= policy.attempts; ++attempt) {
        auto pause = policy.pause_before(attempt);
        if (attempt > 0 && pause.count() > 0) {
            asio::steady_timer t(co_await asio::this_coro::executor, pause);
            co_await t.async_wait(asio::use_awaitable);
        }
        struct lookup
        {
            std::optional<std::string> status;
            std::string server_started;
        } answer;
        try {
            auto other = co_await pool_state::acquire(loop.state, true);
            answer = co_await other->query_one<lookup>(
                "SELECT txid_status($1), pg_postmaster_start_time()::text", *xid);
        } catch (const error& e) {
            if (e.sqlstate() == "22023") {
                // "transaction ID is in the future": the server (restarted after a crash, or
                // a promoted standby) never saw it, so it cannot have committed.
                answer.status = "aborted";
            } else if (is_connection_error(e) || e.code() == errc::pool_timeout) {
                why = e.what();
                continue;
            } else {
                throw;
            }
        }
        const auto& status = answer.status;
        bool restarted = answer.server_started != marker.server_started;
        if (status == "committed" && !restarted) {
            l->info("Transaction {} did commit", *xid);
            co_return;
        }
        // Rolled back is safe to act on even across a restart: a transaction whose commit
        // reached the disk keeps its xid, so an xid that was handed out again was not ours.
        if (status == "aborted") {
            l->warn("Transaction {} was rolled back; replaying it", *xid);
            throw error(errc::connection_lost,
                        "P1017: the connection was lost during COMMIT and the transaction was "
                        "rolled back",
                        {}, {}, {}, {}, false);
        }
        if (restarted) {
            why = "the server restarted since COMMIT was sent, so its answer (" +
                  status.value_or("unknown") + ") may be about another transaction";
            break;
        }
        if (status == "in progress" && in_progress_polls++ < 100) {
            // The server is still finishing the backend that ran it; ask again shortly (for
            // at most 5 s: then the answer is "unknown").
            asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
            co_await t.async_wait(asio::use_awaitable);
            --attempt;
            continue;
        }
        break; // NULL: the id is too old for the server to know
    }
    error unknown(errc::commit_outcome_unknown,
                  "the connection was lost after COMMIT was sent and the server could not say "
                  "whether transaction " +
                      std::to_string(*xid) + " committed: " + why,
                  {}, {}, {}, {}, true);
    unknown.set_maybe_applied(true);
    throw unknown;
}

} // namespace detail

void pool::throw_unless_retry(detail::retry_loop& loop, detail::retry_loop::verdict verdict,
                              std::exception_ptr failure)
{
    using verdict_t = detail::retry_loop::verdict;
    if (verdict == verdict_t::rethrow)
        std::rethrow_exception(failure);
    if (verdict == verdict_t::give_up) {
        auto e = loop.final_error();
        logger()->error("{}", e.what());
        throw e;
    }
}

} // namespace pgco
