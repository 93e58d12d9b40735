// The wait for new input (src/edge_wait.hpp) on a Unix socket pair: what it reports, what it
// deliberately does not, cancellation, and a race with other threads running the reactor.

#include "edge_wait.hpp"

#include <boost/asio.hpp>
#include <boost/asio/experimental/parallel_group.hpp>

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

using socket_t = asio::generic::stream_protocol::socket;

struct socket_pair
{
    asio::io_context ctx;
    socket_t sock{ctx};
    int peer = -1;
    pgco::detail::edge_wait<socket_t> waiter;

    socket_pair()
    {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0)
            throw std::runtime_error("socketpair failed");
        sock.assign(asio::generic::stream_protocol(AF_UNIX, 0), fds[0]);
        peer = fds[1];
        waiter.attach(sock);
    }
    ~socket_pair()
    {
        if (peer >= 0)
            ::close(peer);
    }

    void send_byte() { ASSERT_EQ(::send(peer, "x", 1, 0), 1); }
    void read_all()
    {
        char buf[64];
        while (::recv(sock.native_handle(), buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
    }

    /// Starts a wait; the optional holds its error once it completed.
    std::shared_ptr<std::optional<boost::system::error_code>> start(bool only_new = true)
    {
        auto done = std::make_shared<std::optional<boost::system::error_code>>();
        waiter.async_wait(sock, only_new,
                          [done](boost::system::error_code ec) { done->emplace(ec); });
        return done;
    }

    void run_for(std::chrono::milliseconds d)
    {
        ctx.restart();
        ctx.run_for(d);
    }

    /// Runs the loop (1 s at most): did the wait complete, with `expected`?
    testing::AssertionResult
    completes(const std::shared_ptr<std::optional<boost::system::error_code>>& done,
              boost::system::error_code expected = {})
    {
        run_for(std::chrono::milliseconds(1000));
        if (!done->has_value())
            return testing::AssertionFailure() << "the wait did not complete";
        if (**done != expected)
            return testing::AssertionFailure() << "the wait completed with " << (*done)->message();
        return testing::AssertionSuccess();
    }
};

} // namespace

TEST(edge_wait, completes_when_input_arrives_after_it_started)
{
    socket_pair p;
    auto done = p.start();
    p.run_for(30ms);
    EXPECT_FALSE(done->has_value()) << "completed with nothing to read";
    p.send_byte();
    ASSERT_TRUE(p.completes(done));
}

TEST(edge_wait, completes_for_input_the_reactor_has_not_reported_yet)
{
    socket_pair p;
    p.send_byte();
    auto done = p.start();
    ASSERT_TRUE(p.completes(done));
}

// The edge was reported while no wait was queued: only the attempt at the start finds it.
TEST(edge_wait, completes_for_input_the_reactor_saw_while_nobody_waited)
{
    socket_pair p;
    auto first = p.start();
    p.send_byte();
    ASSERT_TRUE(p.completes(first));
    p.read_all();

    p.send_byte();
    asio::steady_timer keep_running(p.ctx, 30ms); // the reactor runs and sees the edge
    keep_running.async_wait([](boost::system::error_code) {});
    p.run_for(1000ms);
    auto second = p.start();
    ASSERT_TRUE(p.completes(second)) << "the input seen while nobody waited was lost";
}

TEST(edge_wait, loops_of_waits_each_complete_at_the_next_input)
{
    socket_pair p;
    for (int i = 0; i < 50; ++i) {
        auto done = p.start();
        p.send_byte();
        ASSERT_TRUE(p.completes(done)) << "round " << i;
        p.read_all();
    }
}

// The price of skipping the re-arm (see edge_wait.hpp), and what shows that it is skipped:
// Asio's wait reports input left unread, this one only input that arrives later.
TEST(edge_wait, input_left_unread_after_an_edge_is_not_reported_again)
{
    socket_pair p;
    auto first = p.start();
    p.send_byte();
    ASSERT_TRUE(p.completes(first));

    auto second = p.start(); // the byte is still there, unread
    p.run_for(50ms);
    EXPECT_FALSE(second->has_value()) << "the wait re-armed the socket";

    p.send_byte(); // new input
    ASSERT_TRUE(p.completes(second));

    auto rearmed = p.start(false); // Asio's own wait: input that is there, read or not
    ASSERT_TRUE(p.completes(rearmed));
}

TEST(edge_wait, reports_the_end_of_the_stream)
{
    socket_pair p;
    auto done = p.start();
    p.run_for(20ms);
    ::close(std::exchange(p.peer, -1));
    ASSERT_TRUE(p.completes(done));
    char c;
    EXPECT_EQ(::recv(p.sock.native_handle(), &c, 1, MSG_DONTWAIT), 0);
}

TEST(edge_wait, a_cancelled_wait_ends_with_operation_aborted)
{
    socket_pair p;
    asio::cancellation_signal signal;
    std::optional<boost::system::error_code> result;
    p.waiter.async_wait(p.sock, true,
                        asio::bind_cancellation_slot(
                            signal.slot(), [&](boost::system::error_code ec) { result = ec; }));
    p.run_for(20ms);
    ASSERT_FALSE(result);
    signal.emit(asio::cancellation_type::terminal);
    p.run_for(1000ms);
    ASSERT_TRUE(result);
    EXPECT_EQ(*result, asio::error::operation_aborted);

    // Cancelling the socket ends it too; and the next wait still sees new input.
    auto second = p.start();
    p.run_for(20ms);
    p.sock.cancel();
    ASSERT_TRUE(p.completes(second, asio::error::operation_aborted));

    auto third = p.start();
    p.send_byte();
    ASSERT_TRUE(p.completes(third));
}

TEST(edge_wait, races_with_a_deadline_through_deferred)
{
    socket_pair p;
    asio::steady_timer timer(p.ctx, 20ms);
    std::optional<std::size_t> winner;
    asio::experimental::make_parallel_group(p.waiter.async_wait(p.sock, true, asio::deferred),
                                            timer.async_wait(asio::deferred))
        .async_wait(asio::experimental::wait_for_one(),
                    [&](std::array<std::size_t, 2> order, boost::system::error_code,
                        boost::system::error_code) { winner = order[0]; });
    p.run_for(1000ms);
    ASSERT_TRUE(winner);
    EXPECT_EQ(*winner, 1u) << "the wait completed before the timer with nothing to read";
}

TEST(edge_wait, an_io_context_destroyed_with_a_wait_pending_frees_its_handler)
{
    auto token = std::make_shared<int>(0);
    std::weak_ptr<int> watch = token;
    {
        auto p = std::make_unique<socket_pair>();
        p->waiter.async_wait(p->sock, true,
                             [token = std::move(token)](boost::system::error_code) {});
        p->run_for(10ms);
    }
    EXPECT_TRUE(watch.expired());
}

// Two threads run the reactor while the main thread starts waits: an edge may be reported
// before the wait is queued (the reactor then tries it at once), or after. Input is sent
// before or after each wait starts, as a server's answer can arrive before its client waits.
TEST(edge_wait, no_input_is_missed_while_other_threads_run_the_reactor)
{
    socket_pair p;
    auto guard = asio::make_work_guard(p.ctx);
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i)
        threads.emplace_back([&] { p.ctx.run(); });
    int missed = 0;
    for (int i = 0; i < 2000 && missed == 0; ++i) {
        auto done = std::make_shared<std::promise<boost::system::error_code>>();
        auto completed = done->get_future();
        bool input_first = i % 2 == 1;
        if (input_first)
            p.send_byte();
        // Started on the socket's executor, as connections start their waits.
        asio::post(p.ctx, [&p, done] {
            p.waiter.async_wait(p.sock, true,
                                [done](boost::system::error_code ec) { done->set_value(ec); });
        });
        if (!input_first) {
            std::this_thread::yield();
            p.send_byte();
        }
        if (completed.wait_for(5s) != std::future_status::ready) {
            ++missed;
            ADD_FAILURE() << "round " << i << " never completed";
            p.sock.cancel();
            completed.wait();
        } else {
            EXPECT_FALSE(completed.get()) << "round " << i;
        }
        // Read what arrived, as libpq would, before the next request.
        std::promise<void> drained;
        asio::post(p.ctx, [&] {
            p.read_all();
            drained.set_value();
        });
        drained.get_future().wait();
    }
    guard.reset();
    p.ctx.stop();
    for (auto& t : threads)
        t.join();
}
