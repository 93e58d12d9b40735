#include "support/fault_proxy.hpp"

#include <boost/asio.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <future>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pgco::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using steady = std::chrono::steady_clock;

namespace {

constexpr std::size_t chunk_size = 16 * 1024;
// How much one direction may hold read but not yet forwarded (matters with `delay`).
constexpr std::size_t max_queued = 1024 * 1024;
constexpr auto connect_timeout = std::chrono::seconds(5);
// How long the destructor lets connections wind down before it stops the io_context outright.
constexpr auto shutdown_limit = std::chrono::seconds(5);

auto ec_token(error_code& ec)
{
    return asio::redirect_error(asio::use_awaitable, ec);
}

/// Closes with a FIN: drops unread bytes first, since closing a socket with unread data makes
/// the kernel send a reset instead.
void close_with_fin(tcp::socket& s)
{
    if (!s.is_open())
        return;
    char sink[4096];
    while (::recv(s.native_handle(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
    error_code ignored;
    s.shutdown(tcp::socket::shutdown_both, ignored);
    s.close(ignored);
}

/// Closes with a reset (SO_LINGER on with a zero timeout).
void close_with_rst(tcp::socket& s)
{
    if (!s.is_open())
        return;
    error_code ignored;
    s.set_option(asio::socket_base::linger(true, 0), ignored);
    s.close(ignored);
}

/// Waits until `timer` is cancelled (the notification) or the connection closes it.
asio::awaitable<void> wait_for_signal(asio::steady_timer& timer)
{
    timer.expires_at(asio::steady_timer::time_point::max());
    error_code ec;
    co_await timer.async_wait(ec_token(ec));
}

void report(std::exception_ptr e)
{
    if (!e)
        return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        std::fprintf(stderr, "fault_proxy: %s\n", x.what());
    } catch (...) {
        std::fprintf(stderr, "fault_proxy: unknown exception\n");
    }
}

} // namespace

struct fault_proxy::impl
{
    struct connection;

    // First, so that it is destroyed last: anything it still holds may refer to what follows.
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
    tcp::acceptor acceptor{io};
    tcp::endpoint target;
    unsigned short port = 0;
    std::atomic<std::size_t> open{0};
    std::atomic<std::size_t> accepted{0};

    // Touched on the proxy's thread only.
    bool stopping = false;
    bool stalled = false;
    bool refusing = false;
    steady::duration delay{};
    std::size_t drop_after = 0;
    std::uint64_t next_id = 0;
    std::unordered_map<std::uint64_t, std::shared_ptr<connection>> connections;

    std::thread thread;
    std::future<void> finished;

    /// Runs `f` on the proxy's thread and returns once it has run.
    template <class F>
    void call(F f)
    {
        std::promise<void> done;
        auto future = done.get_future();
        asio::post(io, [&] {
            f();
            done.set_value();
        });
        future.get();
    }

    template <class F>
    void for_each_connection(F f)
    {
        auto all = connections; // f may close them, which erases them
        for (auto& [id, c] : all)
            f(*c);
    }

    asio::awaitable<void> accept_loop();
};

struct fault_proxy::impl::connection : std::enable_shared_from_this<connection>
{
    struct chunk
    {
        steady::time_point due;
        std::vector<char> bytes;
    };

    /// One direction: a reader fills the queue, a writer drains it.
    struct pipe
    {
        pipe(tcp::socket& from, tcp::socket& to, asio::io_context& io)
            : from(from), to(to), wake(io), space(io)
        {}
        tcp::socket& from;
        tcp::socket& to;
        std::deque<chunk> queue;
        std::size_t queued = 0;
        bool reader_done = false; // the source sent a FIN
        asio::steady_timer wake;  // the writer waits on it; cancel() wakes it
        asio::steady_timer space; // the reader waits on it when the queue is full
    };

    connection(impl& owner, std::uint64_t id, tcp::socket client, std::size_t drop_after)
        : owner(owner), id(id), drop_after(drop_after), client(std::move(client)), server(owner.io),
          connect_timer(owner.io), up(this->client, server, owner.io),
          down(server, this->client, owner.io)
    {}

    impl& owner;
    const std::uint64_t id;
    const std::size_t drop_after;
    std::size_t forwarded_down = 0;
    int directions_finished = 0;
    bool closed = false;
    tcp::socket client;
    tcp::socket server;
    asio::steady_timer connect_timer;
    pipe up;   // client -> server
    pipe down; // server -> client

    void wake_writers()
    {
        up.wake.cancel();
        down.wake.cancel();
    }

    void close(bool reset_client)
    {
        if (closed)
            return;
        closed = true;
        auto keep = shared_from_this(); // erasing it below may drop the last other reference
        if (reset_client)
            close_with_rst(client);
        else
            close_with_fin(client);
        close_with_fin(server);
        connect_timer.cancel();
        for (pipe* p : {&up, &down}) {
            p->queue.clear();
            p->queued = 0;
            p->wake.cancel();
            p->space.cancel();
        }
        owner.connections.erase(id);
        --owner.open;
    }

    static asio::awaitable<void> run(std::shared_ptr<connection> c)
    {
        if (c->closed)
            co_return;
        c->connect_timer.expires_after(connect_timeout);
        c->connect_timer.async_wait([c](error_code ec) {
            if (!ec && !c->closed) {
                error_code ignored;
                c->server.close(ignored); // aborts the connect
            }
        });
        error_code ec;
        co_await c->server.async_connect(c->owner.target, ec_token(ec));
        c->connect_timer.cancel();
        if (c->closed)
            co_return;
        if (ec) {
            c->close(false);
            co_return;
        }
        error_code ignored;
        c->server.set_option(tcp::no_delay(true), ignored);
        auto& io = c->owner.io;
        asio::co_spawn(io, read_loop(c, c->up), report);
        asio::co_spawn(io, write_loop(c, c->up, false), report);
        asio::co_spawn(io, read_loop(c, c->down), report);
        asio::co_spawn(io, write_loop(c, c->down, true), report);
    }

    static asio::awaitable<void> read_loop(std::shared_ptr<connection> c, pipe& p)
    {
        for (;;) {
            while (!c->closed && p.queued >= max_queued)
                co_await wait_for_signal(p.space);
            if (c->closed)
                co_return;
            std::vector<char> bytes(chunk_size);
            error_code ec;
            std::size_t n = co_await p.from.async_read_some(asio::buffer(bytes), ec_token(ec));
            if (c->closed)
                co_return;
            if (ec == asio::error::eof) {
                p.reader_done = true;
                p.wake.cancel();
                co_return;
            }
            if (ec) {
                c->close(false);
                co_return;
            }
            if (c->owner.stalled)
                continue; // lost in the partition
            bytes.resize(n);
            p.queue.push_back({steady::now() + c->owner.delay, std::move(bytes)});
            p.queued += n;
            p.wake.cancel();
        }
    }

    static asio::awaitable<void> write_loop(std::shared_ptr<connection> c, pipe& p, bool downstream)
    {
        for (;;) {
            if (c->closed)
                co_return;
            if (p.queue.empty()) {
                if (!p.reader_done || c->owner.stalled) {
                    co_await wait_for_signal(p.wake);
                    continue;
                }
                error_code ignored;
                p.to.shutdown(tcp::socket::shutdown_send, ignored); // pass the FIN on
                if (++c->directions_finished == 2)
                    c->close(false);
                co_return;
            }
            if (c->owner.stalled) {
                p.queue.clear();
                p.queued = 0;
                p.space.cancel();
                continue;
            }
            if (auto due = p.queue.front().due; due > steady::now()) {
                p.wake.expires_at(due);
                error_code ec;
                co_await p.wake.async_wait(ec_token(ec));
                continue; // re-check everything: it may have closed or stalled meanwhile
            }
            chunk next = std::move(p.queue.front());
            p.queue.pop_front();
            p.queued -= next.bytes.size();
            p.space.cancel();
            std::size_t n = next.bytes.size();
            if (downstream && c->drop_after != 0)
                n = std::min(n, c->drop_after - c->forwarded_down);
            error_code ec;
            co_await asio::async_write(p.to, asio::buffer(next.bytes.data(), n), ec_token(ec));
            if (c->closed)
                co_return;
            if (ec) {
                c->close(false);
                co_return;
            }
            if (downstream && c->drop_after != 0) {
                c->forwarded_down += n;
                if (c->forwarded_down >= c->drop_after) {
                    c->close(false);
                    co_return;
                }
            }
        }
    }
};

asio::awaitable<void> fault_proxy::impl::accept_loop()
{
    for (;;) {
        tcp::socket socket(io);
        error_code ec;
        co_await acceptor.async_accept(socket, ec_token(ec));
        if (stopping || !acceptor.is_open())
            co_return;
        if (ec) {
            // Out of descriptors or the like: back off a little rather than spin.
            asio::steady_timer pause(io, std::chrono::milliseconds(10));
            co_await pause.async_wait(ec_token(ec));
            continue;
        }
        ++accepted;
        if (refusing) {
            close_with_fin(socket);
            continue;
        }
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto c = std::make_shared<connection>(*this, next_id++, std::move(socket), drop_after);
        connections.emplace(c->id, c);
        ++open;
        asio::co_spawn(io, connection::run(c), report);
    }
}

fault_proxy::fault_proxy(std::string target_host, unsigned short target_port)
    : impl_(std::make_unique<impl>())
{
    auto& m = *impl_;
    m.target = tcp::endpoint(asio::ip::make_address(target_host), target_port);
    tcp::endpoint local(asio::ip::address_v4::loopback(), 0);
    m.acceptor.open(local.protocol());
    m.acceptor.bind(local);
    m.acceptor.listen();
    m.port = m.acceptor.local_endpoint().port();
    asio::co_spawn(m.io, m.accept_loop(), report);
    std::promise<void> finished;
    m.finished = finished.get_future();
    m.thread = std::thread([&m, finished = std::move(finished)]() mutable {
        try {
            m.io.run();
        } catch (...) {
            report(std::current_exception());
        }
        finished.set_value();
    });
}

fault_proxy::~fault_proxy()
{
    auto& m = *impl_;
    m.call([&m] {
        m.stopping = true;
        error_code ignored;
        m.acceptor.close(ignored);
        m.for_each_connection([](impl::connection& c) { c.close(false); });
    });
    m.work.reset();
    if (m.finished.wait_for(shutdown_limit) == std::future_status::timeout) {
        std::fprintf(stderr, "fault_proxy: connections did not wind down; stopping\n");
        m.io.stop();
    }
    m.thread.join();
}

unsigned short fault_proxy::port() const
{
    return impl_->port;
}

std::size_t fault_proxy::connections() const
{
    return impl_->open.load();
}

std::size_t fault_proxy::accepted() const
{
    return impl_->accepted.load();
}

void fault_proxy::cut_all()
{
    auto& m = *impl_;
    m.call([&m] { m.for_each_connection([](impl::connection& c) { c.close(false); }); });
}

void fault_proxy::reset_all()
{
    auto& m = *impl_;
    m.call([&m] { m.for_each_connection([](impl::connection& c) { c.close(true); }); });
}

void fault_proxy::stall(bool on)
{
    auto& m = *impl_;
    m.call([&m, on] {
        m.stalled = on;
        // Writers drop what they hold when a stall begins, and pass held FINs on when it ends.
        m.for_each_connection([](impl::connection& c) { c.wake_writers(); });
    });
}

void fault_proxy::delay(std::chrono::milliseconds d)
{
    auto& m = *impl_;
    m.call([&m, d] { m.delay = d; });
}

void fault_proxy::drop_after(std::size_t bytes)
{
    auto& m = *impl_;
    m.call([&m, bytes] { m.drop_after = bytes; });
}

void fault_proxy::refuse(bool on)
{
    auto& m = *impl_;
    m.call([&m, on] { m.refusing = on; });
}

} // namespace pgco::test
