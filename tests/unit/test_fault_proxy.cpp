// The fault-injection proxy (tests/support/fault_proxy), in front of a small echo server. Every
// client operation has a deadline, so a broken proxy fails a test instead of hanging it.

#include "support/fault_proxy.hpp"

#include <boost/asio.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using pgco::test::fault_proxy;

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using steady = std::chrono::steady_clock;

/// Echoes every byte back, on its own thread; closes a connection once its client sends a FIN.
class echo_server
{
public:
    echo_server()
    {
        tcp::endpoint local(asio::ip::address_v4::loopback(), 0);
        acceptor_.open(local.protocol());
        acceptor_.bind(local);
        acceptor_.listen();
        port_ = acceptor_.local_endpoint().port();
        asio::co_spawn(io_, accept_loop(), asio::detached);
        thread_ = std::thread([this] { io_.run(); });
    }

    ~echo_server()
    {
        asio::post(io_, [this] {
            error_code ignored;
            acceptor_.close(ignored);
            for (auto& weak : sessions_)
                if (auto s = weak.lock())
                    s->close(ignored);
        });
        thread_.join();
    }

    unsigned short port() const { return port_; }

private:
    asio::awaitable<void> accept_loop()
    {
        for (;;) {
            auto socket = std::make_shared<tcp::socket>(io_);
            error_code ec;
            co_await acceptor_.async_accept(*socket, asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return;
            sessions_.push_back(socket);
            asio::co_spawn(io_, echo(socket), asio::detached);
        }
    }

    static asio::awaitable<void> echo(std::shared_ptr<tcp::socket> socket)
    {
        char buffer[4096];
        for (;;) {
            error_code ec;
            auto n = co_await socket->async_read_some(
                asio::buffer(buffer), asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                break;
            co_await asio::async_write(*socket, asio::buffer(buffer, n),
                                       asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                break;
        }
        error_code ignored;
        socket->close(ignored);
    }

    asio::io_context io_;
    tcp::acceptor acceptor_{io_};
    unsigned short port_ = 0;
    std::vector<std::weak_ptr<tcp::socket>> sessions_; // the server's thread only
    std::thread thread_;
};

struct read_result
{
    std::string data;
    error_code ec; // why reading stopped; none when all the bytes asked for arrived
};

/// A client socket whose every operation has a deadline (its own io_context, run for the time
/// left); an operation that does not finish in time yields asio::error::timed_out.
class client
{
public:
    explicit client(unsigned short port, std::chrono::milliseconds limit = 1s)
    {
        connect_error_ = run(
            [&](auto done) {
                socket_.async_connect({asio::ip::address_v4::loopback(), port}, done);
            },
            limit);
    }

    error_code connect_error() const { return connect_error_; }

    error_code write(std::string_view data, std::chrono::milliseconds limit = 1s)
    {
        return run(
            [&](auto done) {
                asio::async_write(socket_, asio::buffer(data),
                                  [done](error_code ec, std::size_t) { done(ec); });
            },
            limit);
    }

    /// Reads until `n` bytes have arrived, the connection ends, or `limit` passes.
    read_result read(std::size_t n, std::chrono::milliseconds limit = 1s)
    {
        read_result result;
        auto deadline = steady::now() + limit;
        while (result.data.size() < n) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
            if (left <= 0ms) {
                result.ec = asio::error::timed_out;
                break;
            }
            char buffer[16384];
            std::size_t got = 0;
            auto ec = run(
                [&](auto done) {
                    socket_.async_read_some(
                        asio::buffer(buffer, std::min(sizeof buffer, n - result.data.size())),
                        [&got, done](error_code ec, std::size_t k) {
                            got = k;
                            done(ec);
                        });
                },
                left);
            result.data.append(buffer, got);
            if (ec) {
                result.ec = ec;
                break;
            }
        }
        return result;
    }

    void shutdown_send()
    {
        error_code ignored;
        socket_.shutdown(tcp::socket::shutdown_send, ignored);
    }

    void close()
    {
        error_code ignored;
        socket_.close(ignored);
    }

private:
    template <class Start>
    error_code run(Start start, std::chrono::milliseconds limit)
    {
        std::optional<error_code> outcome;
        start([&outcome](error_code ec) { outcome = ec; });
        io_.restart();
        io_.run_for(limit);
        if (outcome)
            return *outcome;
        error_code ignored;
        socket_.cancel(ignored);
        io_.restart();
        io_.run();
        return asio::error::timed_out;
    }

    asio::io_context io_;
    tcp::socket socket_{io_};
    error_code connect_error_;
};

/// Waits up to `limit` for `condition`.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = 1s)
{
    auto deadline = steady::now() + limit;
    while (!condition()) {
        if (steady::now() >= deadline)
            return false;
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

bool ended(const error_code& ec)
{
    return ec == asio::error::eof || ec == asio::error::connection_reset;
}

/// One message there and back.
void expect_round_trip(client& c, const std::string& message)
{
    ASSERT_FALSE(c.write(message));
    auto r = c.read(message.size());
    EXPECT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.data, message);
}

class fault_proxy_test : public ::testing::Test
{
protected:
    echo_server server;
    fault_proxy proxy{"127.0.0.1", server.port()};
};

} // namespace

TEST_F(fault_proxy_test, echoes_through)
{
    client c(proxy.port());
    ASSERT_FALSE(c.connect_error());
    expect_round_trip(c, "hello");

    // More than a chunk, several times over, both ways.
    std::string big(256 * 1024, '\0');
    for (std::size_t i = 0; i < big.size(); ++i)
        big[i] = static_cast<char>('a' + i % 26);
    ASSERT_FALSE(c.write(big));
    auto r = c.read(big.size());
    EXPECT_FALSE(r.ec) << r.ec.message();
    EXPECT_TRUE(r.data == big);
}

TEST_F(fault_proxy_test, counts_connections)
{
    EXPECT_EQ(proxy.connections(), 0u);
    EXPECT_EQ(proxy.accepted(), 0u);
    client a(proxy.port());
    client b(proxy.port());
    expect_round_trip(a, "a");
    expect_round_trip(b, "b");
    EXPECT_EQ(proxy.connections(), 2u);
    EXPECT_EQ(proxy.accepted(), 2u);

    a.close();
    EXPECT_TRUE(eventually([&] { return proxy.connections() == 1; }));
    EXPECT_EQ(proxy.accepted(), 2u);

    proxy.cut_all();
    EXPECT_EQ(proxy.connections(), 0u);
    EXPECT_EQ(proxy.accepted(), 2u);
}

TEST_F(fault_proxy_test, passes_half_close_on)
{
    client c(proxy.port());
    expect_round_trip(c, "x");
    c.shutdown_send(); // the echo server closes when it reads the FIN
    auto r = c.read(1);
    EXPECT_EQ(r.ec, asio::error::eof) << r.ec.message();
    EXPECT_TRUE(eventually([&] { return proxy.connections() == 0; }));
}

TEST_F(fault_proxy_test, cut_all_gives_eof)
{
    client c(proxy.port());
    expect_round_trip(c, "hello");
    proxy.cut_all();
    EXPECT_EQ(proxy.connections(), 0u);
    auto r = c.read(1);
    EXPECT_EQ(r.ec, asio::error::eof) << r.ec.message();
    EXPECT_EQ(r.data, "");

    client again(proxy.port()); // the proxy itself goes on
    expect_round_trip(again, "again");
}

TEST_F(fault_proxy_test, reset_all_gives_connection_reset)
{
    client c(proxy.port());
    expect_round_trip(c, "hello");
    proxy.reset_all();
    EXPECT_EQ(proxy.connections(), 0u);
    auto r = c.read(1);
    EXPECT_EQ(r.ec, asio::error::connection_reset) << r.ec.message();

    client again(proxy.port());
    expect_round_trip(again, "again");
}

TEST_F(fault_proxy_test, stall_is_a_silent_partition)
{
    client c(proxy.port());
    expect_round_trip(c, "before");

    proxy.stall(true);
    ASSERT_FALSE(c.write("lost"));
    auto r = c.read(4, 300ms);
    EXPECT_EQ(r.ec, asio::error::timed_out) << r.ec.message();
    EXPECT_EQ(r.data, "");
    EXPECT_EQ(proxy.connections(), 1u);

    client during(proxy.port()); // still accepted
    ASSERT_FALSE(during.connect_error());
    EXPECT_TRUE(eventually([&] { return proxy.connections() == 2; }));

    proxy.stall(false);
    expect_round_trip(c, "after"); // and not "lost", which was dropped
    expect_round_trip(during, "during");
}

TEST_F(fault_proxy_test, delay_slows_every_chunk)
{
    client c(proxy.port());
    expect_round_trip(c, "warm");

    proxy.delay(200ms);
    auto start = steady::now();
    ASSERT_FALSE(c.write("one"));
    ASSERT_FALSE(c.write("two"));
    auto r = c.read(6, 1500ms);
    auto took = steady::now() - start;
    EXPECT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.data, "onetwo");
    EXPECT_GE(took, 200ms);

    proxy.delay(0ms);
    start = steady::now();
    expect_round_trip(c, "fast");
    EXPECT_LT(steady::now() - start, 200ms);
}

TEST_F(fault_proxy_test, drop_after_cuts_new_connections)
{
    client old(proxy.port());
    expect_round_trip(old, "x");

    proxy.drop_after(5);
    client c(proxy.port());
    ASSERT_FALSE(c.write("hello world"));
    auto r = c.read(11);
    EXPECT_TRUE(ended(r.ec)) << r.ec.message();
    EXPECT_LE(r.data.size(), 5u);
    EXPECT_EQ(r.data, std::string("hello").substr(0, r.data.size()));

    expect_round_trip(old, "hello world"); // opened before: unaffected

    proxy.drop_after(0);
    client after(proxy.port());
    expect_round_trip(after, "hello world");
}

TEST_F(fault_proxy_test, refuse_closes_new_connections)
{
    proxy.refuse(true);
    client c(proxy.port());
    ASSERT_FALSE(c.connect_error()); // the kernel accepts; the proxy closes right away
    auto r = c.read(1);
    EXPECT_TRUE(ended(r.ec)) << r.ec.message();
    EXPECT_EQ(proxy.accepted(), 1u);
    EXPECT_EQ(proxy.connections(), 0u);

    proxy.refuse(false);
    client after(proxy.port());
    expect_round_trip(after, "ok");
    EXPECT_EQ(proxy.accepted(), 2u);
}

TEST(fault_proxy, destroyed_with_open_connections)
{
    echo_server server;
    auto proxy = std::make_unique<fault_proxy>("127.0.0.1", server.port());
    client idle(proxy->port());
    client busy(proxy->port());
    expect_round_trip(idle, "idle");
    proxy->delay(500ms);
    ASSERT_FALSE(busy.write("in flight"));
    proxy.reset();
    EXPECT_TRUE(ended(idle.read(1).ec));
    auto r = busy.read(9);
    EXPECT_TRUE(ended(r.ec)) << r.ec.message();
    EXPECT_EQ(r.data, "");
}

TEST(fault_proxy, unreachable_target_closes_the_client)
{
    // A port that was free a moment ago: nothing listens there.
    unsigned short dead_port;
    {
        asio::io_context io;
        tcp::acceptor a(io, {asio::ip::address_v4::loopback(), 0});
        dead_port = a.local_endpoint().port();
    }
    fault_proxy proxy("127.0.0.1", dead_port);
    client c(proxy.port());
    EXPECT_TRUE(ended(c.read(1).ec));
    EXPECT_TRUE(eventually([&] { return proxy.connections() == 0; }));
}

TEST(fault_proxy, survives_cuts_racing_with_traffic)
{
    echo_server server;
    fault_proxy proxy("127.0.0.1", server.port());
    std::atomic<bool> stop{false};
    std::atomic<int> round_trips{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; ++i)
        clients.emplace_back([&] {
            std::string message(3000, 'm');
            while (!stop) {
                client c(proxy.port(), 200ms);
                while (!stop && !c.write(message, 200ms)) {
                    if (c.read(message.size(), 200ms).ec)
                        break;
                    ++round_trips;
                }
            }
        });
    auto until = steady::now() + 600ms;
    for (int round = 0; steady::now() < until; ++round) {
        std::this_thread::sleep_for(15ms);
        switch (round % 4) {
        case 0:
            proxy.cut_all();
            break;
        case 1:
            proxy.reset_all();
            break;
        case 2:
            proxy.stall(true);
            break;
        default:
            proxy.stall(false);
            proxy.delay(round % 8 == 3 ? 5ms : 0ms);
            break;
        }
    }
    stop = true;
    for (auto& t : clients)
        t.join();
    proxy.stall(false);
    EXPECT_TRUE(eventually([&] { return proxy.connections() == 0; }));
    EXPECT_GT(proxy.accepted(), 4u);
    EXPECT_GT(round_trips, 0);
    std::printf("%d round trips over %zu connections\n", round_trips.load(), proxy.accepted());
}
