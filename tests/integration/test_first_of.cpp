// detail::first_of on an io_context that several threads run. No server needed; it lives in
// this executable so that CI also runs it under ThreadSanitizer.

#include "first_of.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <future>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

/// An io_context run by `n` threads until the object goes.
struct threaded_context
{
    asio::io_context ioc;
    asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
    std::vector<std::thread> threads;

    explicit threaded_context(int n)
    {
        for (int i = 0; i < n; ++i)
            threads.emplace_back([this] { ioc.run(); });
    }
    ~threaded_context()
    {
        work.reset();
        ioc.stop();
        for (auto& t : threads)
            t.join();
    }
};

/// An operation that completes on the executor's threads at once, while the thread that
/// started it goes on with its initiation for `stall`: the window in which the group it belongs
/// to can complete and resume the caller elsewhere.
struct initiate_then_stall
{
    asio::any_io_executor ex;
    std::chrono::milliseconds stall;

    template <class Handler>
    void operator()(Handler handler) const
    {
        asio::post(ex, std::move(handler));
        std::this_thread::sleep_for(stall);
    }
};

auto complete_then_stall(asio::any_io_executor ex, std::chrono::milliseconds stall)
{
    return asio::async_initiate<const asio::deferred_t&, void()>(initiate_then_stall{ex, stall},
                                                                 asio::deferred);
}

/// Runs `coro` on `ctx` with a cancellation slot of `sig`; the future gives how it ended.
template <class Coro>
std::future<std::exception_ptr> spawn(threaded_context& ctx, asio::cancellation_signal& sig,
                                      Coro coro)
{
    auto done = std::make_shared<std::promise<std::exception_ptr>>();
    auto f = done->get_future();
    asio::co_spawn(ctx.ioc, std::move(coro),
                   asio::bind_cancellation_slot(
                       sig.slot(), [done](std::exception_ptr e) { done->set_value(e); }));
    return f;
}

/// The last wait of both cancellation tests: two 10 s timers, which only a cancellation of the
/// caller ends early. `waiting` is set just before it; `cancelled` once both were aborted.
asio::awaitable<void> wait_to_be_cancelled(std::atomic<bool>& waiting, std::atomic<bool>& cancelled)
{
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer a(ex, 10s), b(ex, 10s);
    waiting = true;
    auto [order, a_ec, b_ec] =
        co_await pgco::detail::first_of(a.async_wait(asio::deferred), b.async_wait(asio::deferred));
    cancelled = a_ec == asio::error::operation_aborted && b_ec == asio::error::operation_aborted;
}

/// Once the coroutine is `waiting` (within `limit`) and `settle` later, cancels it through
/// `sig` on one of the context's threads, and checks that its wait ended within 3 s, cancelled.
void cancel_its_last_wait(threaded_context& ctx, asio::cancellation_signal& sig,
                          std::future<std::exception_ptr>& f, const std::atomic<bool>& waiting,
                          const std::atomic<bool>& cancelled, std::chrono::seconds limit,
                          std::chrono::milliseconds settle)
{
    auto start = std::chrono::steady_clock::now();
    while (!waiting && std::chrono::steady_clock::now() - start < limit)
        std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(waiting) << "the groups before the last wait did not complete in " << limit.count()
                         << " s";
    std::this_thread::sleep_for(settle);
    asio::post(ctx.ioc, [&] { sig.emit(asio::cancellation_type::terminal); });
    ASSERT_EQ(f.wait_for(3s), std::future_status::ready)
        << "cancelling the caller did not end its wait";
    EXPECT_FALSE(f.get());
    EXPECT_TRUE(cancelled) << "the wait ended without being cancelled";
}

} // namespace

// The group completes, and its caller goes on to the next wait, before the thread that launched
// it is done: with Boost 1.81's parallel_group as it stands, that thread then puts the finished
// group's cancellation handler into the caller's slot, and cancelling the caller no longer
// reaches its next wait (it sat out the 10 s timers).
TEST(first_of, cancelling_the_caller_reaches_its_next_wait_after_a_group_finished_elsewhere)
{
    asio::cancellation_signal sig; // outlives the coroutine
    threaded_context ctx(3);
    std::atomic<bool> waiting_again{false}, cancelled{false};
    auto f = spawn(ctx, sig, [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        co_await pgco::detail::first_of(asio::post(ex, asio::deferred),
                                        complete_then_stall(ex, 200ms));
        co_await wait_to_be_cancelled(waiting_again, cancelled);
    });
    // 400 ms: past the stall, the launching thread is done with the first group.
    cancel_its_last_wait(ctx, sig, f, waiting_again, cancelled, 5s, 400ms);
}

// The race without the stall, many times over: LeakSanitizer and ThreadSanitizer watch it (the
// CI symptom was a leaked cancellation handler), and the caller stays cancellable throughout.
TEST(first_of, many_groups_finishing_on_other_threads_leave_the_caller_cancellable)
{
    asio::cancellation_signal sig;
    threaded_context ctx(4);
    std::atomic<bool> waiting{false}, cancelled{false};
    auto f = spawn(ctx, sig, [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        for (int i = 0; i < 2000; ++i)
            co_await pgco::detail::first_of(asio::post(ex, asio::deferred),
                                            asio::post(ex, asio::deferred));
        co_await wait_to_be_cancelled(waiting, cancelled);
    });
    cancel_its_last_wait(ctx, sig, f, waiting, cancelled, 20s, 100ms);
}

// The results and the order come through as parallel_group gives them.
TEST(first_of, completes_with_the_order_and_every_operations_results)
{
    asio::cancellation_signal sig;
    threaded_context ctx(2);
    std::atomic<int> order0{-1};
    std::atomic<bool> slow_aborted{false}, fast_ok{false};
    auto f = spawn(ctx, sig, [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::steady_timer fast(ex, 1ms), slow(ex, 10s);
        auto [order, fast_ec, slow_ec] = co_await pgco::detail::first_of(
            fast.async_wait(asio::deferred), slow.async_wait(asio::deferred));
        order0 = static_cast<int>(order[0]);
        fast_ok = !fast_ec;
        slow_aborted = slow_ec == asio::error::operation_aborted;
    });
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    EXPECT_FALSE(f.get());
    EXPECT_EQ(order0, 0);
    EXPECT_TRUE(fast_ok);
    EXPECT_TRUE(slow_aborted);
}
