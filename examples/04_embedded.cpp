// pgco inside an application that has its own work on the same io_context: a 10 ms heartbeat
// timer and a small TCP echo server. A pool queries every 100 ms, first against the real
// database, then against one that cannot be reached. The heartbeat keeps its rhythm and the
// echo server keeps answering throughout, because no pgco operation ever blocks the thread:
// while the database is down, queries just fail (after their retries) with a clear error.
//
//   DATABASE_URL=postgresql://user:password@localhost/db ./pgco_example_04_embedded [--check]
//       [--outage-url URL] [--max-gap-ms N]
//
// Without --outage-url the outage is a loopback port with nothing listening. --check makes
// the program exit non-zero unless every expectation held.

#include <pgco/pgco.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct settings
{
    bool check = false;
    std::string outage_url;
    long max_gap_ms = 50;
};

// What the application's own work saw during one phase.
struct phase_stats
{
    long heartbeat_ticks = 0;
    clock_type::duration heartbeat_max_gap{0};
    long echo_ok = 0;
    long echo_failed = 0;
    clock_type::duration echo_max_rtt{0};
    long queries_ok = 0;
    long queries_failed = 0;
    long queries_in_flight = 0;
    long unclear_errors = 0; // failures that were not a connection-level pgco::error
    std::string first_error;
};

struct app
{
    settings cfg;
    phase_stats* phase = nullptr; // where the background work records what it sees
    bool stopping = false;
    int background = 0; // heartbeat, echo server and probe still running
};

long ms(clock_type::duration d)
{
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

// The application's own periodic work: it notices any stall of the event loop.
asio::awaitable<void> heartbeat(app& a)
{
    asio::steady_timer t(co_await asio::this_coro::executor);
    auto last = clock_type::now();
    while (!a.stopping) {
        t.expires_after(10ms);
        co_await t.async_wait(asio::use_awaitable);
        auto now = clock_type::now();
        a.phase->heartbeat_max_gap = std::max(a.phase->heartbeat_max_gap, now - last);
        ++a.phase->heartbeat_ticks;
        last = now;
    }
}

asio::awaitable<void> echo_session(tcp::socket s)
{
    char buf[512];
    for (;;) {
        auto [ec, n] =
            co_await s.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
        if (ec)
            co_return; // the client left
        co_await asio::async_write(s, asio::buffer(buf, n), asio::use_awaitable);
    }
}

asio::awaitable<void> echo_server(tcp::acceptor& acceptor)
{
    for (;;) {
        auto [ec, s] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec)
            co_return; // closed at shutdown
        asio::co_spawn(acceptor.get_executor(), echo_session(std::move(s)), asio::detached);
    }
}

// A client of the echo server, as another part of the application might be: one round trip
// every 20 ms.
asio::awaitable<void> echo_probe(app& a, tcp::endpoint server)
{
    auto ex = co_await asio::this_coro::executor;
    tcp::socket s(ex);
    co_await s.async_connect(server, asio::use_awaitable);
    asio::steady_timer t(ex);
    for (long i = 0; !a.stopping; ++i) {
        const std::string msg = "ping " + std::to_string(i) + "\n";
        std::string reply(msg.size(), '\0');
        auto start = clock_type::now();
        auto [wec, wn] =
            co_await asio::async_write(s, asio::buffer(msg), asio::as_tuple(asio::use_awaitable));
        auto [rec, rn] =
            co_await asio::async_read(s, asio::buffer(reply), asio::as_tuple(asio::use_awaitable));
        if (!wec && !rec && reply == msg) {
            ++a.phase->echo_ok;
            a.phase->echo_max_rtt = std::max(a.phase->echo_max_rtt, clock_type::now() - start);
        } else {
            ++a.phase->echo_failed;
        }
        t.expires_after(20ms);
        co_await t.async_wait(asio::use_awaitable);
    }
}

asio::awaitable<void> one_query(pgco::pool& db, phase_stats& st, std::int64_t n)
{
    ++st.queries_in_flight;
    try {
        auto r = co_await db.query_one<std::int64_t>("SELECT $1::int8 + 1", n);
        if (r == n + 1)
            ++st.queries_ok;
        else
            ++st.queries_failed;
    } catch (const pgco::error& e) {
        ++st.queries_failed;
        if (!pgco::is_connection_error(e) && e.code() != pgco::errc::pool_timeout)
            ++st.unclear_errors;
        if (st.first_error.empty())
            st.first_error = e.what();
    } catch (const std::exception& e) {
        ++st.queries_failed;
        ++st.unclear_errors;
        if (st.first_error.empty())
            st.first_error = e.what();
    }
    --st.queries_in_flight;
}

// Starts a query every 100 ms for `length`, without waiting for one to finish before starting
// the next (a failing query takes as long as its retries), then waits for the stragglers.
asio::awaitable<void> run_phase(app& a, phase_stats& st, const pgco::pool_options& opts,
                                clock_type::duration length)
{
    auto ex = co_await asio::this_coro::executor;
    a.phase = &st;
    pgco::pool db(ex, opts);
    asio::steady_timer t(ex);
    auto end = clock_type::now() + length;
    for (std::int64_t n = 0; clock_type::now() < end; ++n) {
        asio::co_spawn(ex, one_query(db, st, n), asio::detached);
        t.expires_after(100ms);
        co_await t.async_wait(asio::use_awaitable);
    }
    for (int i = 0; i < 2000 && st.queries_in_flight > 0; ++i) { // at most 20 s
        t.expires_after(10ms);
        co_await t.async_wait(asio::use_awaitable);
    }
    co_await db.close(1s);
}

void report(const char* name, const phase_stats& st)
{
    std::printf("%-12s heartbeat: %ld ticks, max gap %ld ms | echo: %ld ok, %ld failed, max "
                "round trip %ld ms | queries: %ld ok, %ld failed\n",
                name, st.heartbeat_ticks, ms(st.heartbeat_max_gap), st.echo_ok, st.echo_failed,
                ms(st.echo_max_rtt), st.queries_ok, st.queries_failed);
    if (!st.first_error.empty())
        std::printf("%-12s first query error: %s\n", name, st.first_error.c_str());
}

// A loopback port nobody listens on: bound, noted, released.
std::string unreachable_url(asio::any_io_executor ex)
{
    tcp::acceptor probe(ex, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    auto port = probe.local_endpoint().port();
    probe.close();
    return "postgresql://app@127.0.0.1:" + std::to_string(port) + "/app";
}

asio::awaitable<int> demo(settings cfg)
{
    auto ex = co_await asio::this_coro::executor;
    app a{cfg};
    phase_stats up, down;
    a.phase = &up;

    tcp::acceptor acceptor(ex, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    // They refer to `a` and `acceptor`: this frame waits for them before it ends.
    auto done = [&a](std::exception_ptr e) {
        --a.background;
        if (e)
            ++a.phase->echo_failed; // only the probe can throw (it could not connect)
    };
    a.background = 3;
    asio::co_spawn(ex, echo_server(acceptor), done);
    asio::co_spawn(ex, heartbeat(a), done);
    asio::co_spawn(ex, echo_probe(a, acceptor.local_endpoint()), done);

    auto healthy = pgco::pool_options::from_env("DATABASE_URL");
    co_await run_phase(a, up, healthy, 1s);

    // Fail within about a second per query rather than after the default 0 + 2 + 4 s retries.
    auto outage =
        pgco::pool_options::from_url(cfg.outage_url.empty() ? unreachable_url(ex) : cfg.outage_url);
    outage.connect_timeout = 500ms;
    outage.pool_timeout = 1s;
    outage.retry.attempts = 1;
    outage.retry.backoff = {100ms};
    std::printf("outage: querying %s\n", outage.redacted().c_str());
    std::fflush(stdout); // before the log lines on standard error
    co_await run_phase(a, down, outage, 1500ms);

    a.stopping = true;
    acceptor.close();
    asio::steady_timer t(ex);
    for (int i = 0; i < 500 && a.background > 0; ++i) { // at most 5 s
        t.expires_after(10ms);
        co_await t.async_wait(asio::use_awaitable);
    }
    report("database up", up);
    report("unreachable", down);

    if (!cfg.check)
        co_return 0;
    int failures = 0;
    auto expect = [&](bool ok, const char* what) {
        if (!ok) {
            std::printf("CHECK FAILED: %s\n", what);
            ++failures;
        }
    };
    for (const phase_stats* st : {&up, &down}) {
        expect(st->heartbeat_ticks >= 50, "the heartbeat ticked");
        expect(ms(st->heartbeat_max_gap) < cfg.max_gap_ms, "the heartbeat never stalled");
        expect(st->echo_ok >= 20 && st->echo_failed == 0, "the echo server kept answering");
    }
    expect(up.queries_ok >= 5 && up.queries_failed == 0, "every query succeeded while up");
    expect(down.queries_failed >= 5 && down.queries_ok == 0,
           "every query failed while unreachable");
    expect(down.unclear_errors == 0, "outage errors were connection errors");
    expect(down.first_error.find("P1001") != std::string::npos ||
               down.first_error.find("P2024") != std::string::npos,
           "the outage error names the cause (P1001 / P2024)");
    if (failures == 0)
        std::printf("embedded check passed\n");
    co_return failures == 0 ? 0 : 1;
}

int main(int argc, char** argv)
{
    settings cfg;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--check"))
            cfg.check = true;
        else if (!std::strcmp(argv[i], "--outage-url") && i + 1 < argc)
            cfg.outage_url = argv[++i];
        else if (!std::strcmp(argv[i], "--max-gap-ms") && i + 1 < argc)
            cfg.max_gap_ms = std::atol(argv[++i]);
        else {
            std::fprintf(stderr, "usage: %s [--check] [--outage-url URL] [--max-gap-ms N]\n",
                         argv[0]);
            return 2;
        }
    }
    asio::io_context io;
    int status = 1;
    asio::co_spawn(io, demo(cfg), [&](std::exception_ptr e, int result) {
        if (!e) {
            status = result;
            return;
        }
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            std::fprintf(stderr, "error: %s\n", ex.what());
        }
    });
    io.run(); // returns once the heartbeat, echo server and pools have stopped
    return status;
}
