// High availability (issue 6, item 4): a real primary and a streaming standby made with
// pg_basebackup -R (scripts/pg-ha-sandbox), and pools whose URL lists both hosts.
//
// - A pool with target_session_attrs=read-write finds the primary whichever host comes first.
// - A second pool with target_session_attrs=prefer-standby (or read-only) reads from the
//   standby, and a write through it is refused by the server and not retried.
// - Failover under load: the fault suite's load (tests/chaos/load.hpp: unique-key writes,
//   checked reads, two-row transactions) runs on a read-write pool while the primary crashes
//   (pg_ctl stop -m immediate) and the standby is promoted. The pool reconnects to the new
//   primary within its retry schedule, no acknowledged write is lost, none is applied twice,
//   and writes whose answer was lost are reported unknown.
//
// The pair is a sandbox of its own (PGCO_SANDBOX_STATE points at pg-ha-sandbox's state; the
// CTest fixture ha_pg_servers starts it), so the other suites' servers are never touched. Tests
// run one at a time (RESOURCE_LOCK ha_servers); each one starts from a primary with a streaming
// standby and leaves one behind, rebuilding the standby after a failover ("heal"). Script calls
// run on a thread of their own (chaos::sandbox), so the io_context keeps running the load.

#include "chaos/chaos_support.hpp"
#include "chaos/load.hpp"

#include "support/server.hpp"

#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/error.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::chaos::clock_type;
using pgco::chaos::load;
using pgco::chaos::log_capture;
using pgco::chaos::sandbox;
using pgco::chaos::sandbox_blocking;
using pgco::chaos::sleep_for;
using pgco::test::database_url;
using pgco::test::run;

namespace {

constexpr auto scenario_limit = std::chrono::milliseconds(90s);

/// The failover test's retry schedule: attempts right away, then after 0.5, 1 and 2 s. The
/// pool must be back on the new primary before it runs out (3.5 s after the first failure).
const std::string retry_schedule = "retry_attempts=4&retry_backoff=0,0.5,1,2";
constexpr auto retry_schedule_total = 3500ms;

/// One node of the pair, as the base URL lists it (node 0 first).
struct node
{
    std::string url; // this node only
    int port = 0;
};

/// The two nodes of the sandbox URL postgresql://user:pw@127.0.0.1:P0,127.0.0.1:P1/db.
std::vector<node> nodes()
{
    auto url = database_url();
    auto at = url.find('@');
    auto slash = url.find('/', at);
    if (at == std::string::npos || slash == std::string::npos)
        throw std::runtime_error("unexpected HA sandbox URL shape");
    auto hosts = url.substr(at + 1, slash - at - 1);
    std::vector<node> out;
    for (std::size_t start = 0; start <= hosts.size();) {
        auto comma = std::min(hosts.find(',', start), hosts.size());
        auto host = hosts.substr(start, comma - start);
        auto colon = host.rfind(':');
        node n;
        n.url = url.substr(0, at + 1) + host + url.substr(slash);
        n.port = std::stoi(host.substr(colon + 1));
        out.push_back(n);
        start = comma + 1;
    }
    if (out.size() != 2)
        throw std::runtime_error("the HA sandbox URL should list two hosts");
    return out;
}

/// The sandbox URL (both hosts, node 0 first) with a query.
std::string both_hosts(const std::string& query)
{
    return database_url() + "?" + query;
}

/// The same hosts in the order given (by node index) with a query.
std::string hosts_in_order(const std::vector<int>& order, const std::string& query)
{
    auto url = database_url();
    auto at = url.find('@');
    auto slash = url.find('/', at);
    auto all = nodes();
    std::string hosts;
    for (int i : order)
        hosts += (hosts.empty() ? "" : ",") + std::string("127.0.0.1:") +
                 std::to_string(all[static_cast<std::size_t>(i)].port);
    return url.substr(0, at + 1) + hosts + url.substr(slash) + "?" + query;
}

struct server_role
{
    int port;
    bool in_recovery;
};

/// Which node is the primary now: asks each one directly. -1 if none answers as primary.
awaitable<int> primary_index()
{
    auto all = nodes();
    for (std::size_t i = 0; i < all.size(); ++i) {
        try {
            auto c = co_await pgco::test::connected(all[i].url);
            if (!co_await c.query_one<bool>("SELECT pg_is_in_recovery()"))
                co_return static_cast<int>(i);
        } catch (const pgco::error&) {
            // down
        }
    }
    co_return -1;
}

/// Connects to one node, trying again every 100 ms for up to `limit`.
awaitable<pgco::connection> connect_to(std::string url, std::chrono::milliseconds limit = 20s)
{
    auto deadline = clock_type::now() + limit;
    for (;;) {
        std::string why;
        try {
            co_return co_await pgco::test::connected(url);
        } catch (const pgco::error& e) {
            why = e.what();
        }
        if (clock_type::now() >= deadline)
            throw std::runtime_error("no connection within " + std::to_string(limit.count()) +
                                     " ms: " + why);
        co_await sleep_for(100ms);
    }
}

/// Before the test: a primary with a streaming standby (healed if an earlier test left it
/// otherwise). After it, also after a failure: the same again, so that the next test (or a
/// --gtest_repeat) starts from the usual topology; after a failover this rebuilds the old
/// primary as a standby of the new one.
class topology_guard
{
public:
    topology_guard() { heal_if_needed(); }
    ~topology_guard() { heal_if_needed(); }
    topology_guard(const topology_guard&) = delete;
    topology_guard& operator=(const topology_guard&) = delete;

private:
    static void heal_if_needed()
    {
        if (sandbox_blocking("status >/dev/null") != 0)
            EXPECT_EQ(sandbox_blocking("heal"), 0) << "could not restore primary + standby";
    }
};

void show_log_if_needed(const log_capture& log)
{
    const char* show = std::getenv("PGCO_CHAOS_SHOW_LOG");
    if (testing::Test::HasFailure() || (show && std::string_view(show) == "1"))
        log.dump();
}

std::string first_failures(const load& l, std::size_t n = 5)
{
    std::string out;
    for (std::size_t i = 0; i < l.failures().size() && i < n; ++i)
        out += "\n  " + l.failures()[i].kind + ": " + l.failures()[i].what;
    return out;
}

} // namespace

// The read-write pool lists the standby first: libpq skips it (its session is read-only) and
// every connection of the pool lands on the primary.
TEST(ha, read_write_url_finds_the_primary_whichever_host_comes_first)
{
    topology_guard topology;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        int primary = co_await primary_index();
        if (primary < 0)
            throw std::runtime_error("no node answers as the primary");
        int standby = 1 - primary;
        auto all = nodes();
        pgco::pool p(
            ex, pgco::pool_options::from_url(hosts_in_order(
                    {standby, primary}, "target_session_attrs=read-write&connection_limit=3")));
        // Several at once, so that the pool opens all three connections.
        std::vector<server_role> seen;
        int pending = 4;
        // Outlives the coroutines it starts (they reach their captures through it).
        auto one = [&]() -> awaitable<void> {
            seen.push_back(co_await p.query_one<server_role>(
                "SELECT inet_server_port(), pg_is_in_recovery() FROM pg_sleep(0.05)"));
        };
        for (int i = 0; i < 4; ++i) {
            asio::co_spawn(ex, one(), [&](std::exception_ptr e) {
                --pending;
                if (e)
                    ADD_FAILURE() << "query through the read-write pool failed";
            });
        }
        for (int i = 0; i < 500 && pending > 0; ++i)
            co_await sleep_for(10ms);
        EXPECT_EQ(pending, 0);
        EXPECT_EQ(seen.size(), 4u);
        for (auto s : seen) {
            EXPECT_EQ(s.port, all[static_cast<std::size_t>(primary)].port);
            EXPECT_FALSE(s.in_recovery);
        }
        EXPECT_GE(p.stats().connections_opened, 2u);
        EXPECT_EQ(co_await p.execute("CREATE TABLE IF NOT EXISTS ha_probe (x int)"), 0u);
        co_await p.close();
    });
}

// Read-only routing: a second pool on the same two hosts with target_session_attrs=
// prefer-standby (or read-only) reads from the standby, which serves data written on the
// primary; a write through it is refused by the server (25006) and is not retried.
TEST(ha, read_pool_with_prefer_standby_reads_from_the_standby)
{
    topology_guard topology;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        int primary = co_await primary_index();
        if (primary < 0)
            throw std::runtime_error("no node answers as the primary");
        auto all = nodes();
        const int standby_port = all[static_cast<std::size_t>(1 - primary)].port;

        pgco::pool writer(ex, pgco::pool_options::from_url(both_hosts(
                                  "target_session_attrs=read-write&connection_limit=2")));
        co_await writer.execute("DROP TABLE IF EXISTS ha_routing");
        co_await writer.execute("CREATE TABLE ha_routing (k int8)");
        co_await writer.execute("INSERT INTO ha_routing SELECT generate_series(1, 100)");

        const std::array<std::string, 3> routes{"prefer-standby", "read-only", "standby"};
        for (const auto& attrs : routes) {
            SCOPED_TRACE(attrs);
            pgco::pool reader(ex, pgco::pool_options::from_url(both_hosts(
                                      "target_session_attrs=" + attrs + "&connection_limit=2")));
            for (int i = 0; i < 5; ++i) {
                auto where = co_await reader.query_one<server_role>(
                    "SELECT inet_server_port(), pg_is_in_recovery()");
                EXPECT_EQ(where.port, standby_port);
                EXPECT_TRUE(where.in_recovery);
            }
            // Synchronous replication (the sandbox's default) acknowledged the commit only once
            // the standby had it; it becomes visible there as soon as it is replayed.
            std::int64_t n = 0;
            for (int i = 0; i < 200 && n != 100; ++i) {
                n = co_await reader.query_one<std::int64_t>("SELECT count(*) FROM ha_routing");
                if (n != 100)
                    co_await sleep_for(10ms);
            }
            EXPECT_EQ(n, 100);

            auto retries_before = reader.stats().query_retries;
            try {
                co_await reader.execute("INSERT INTO ha_routing VALUES (0)");
                ADD_FAILURE() << "a write through the standby was accepted";
            } catch (const pgco::error& e) {
                EXPECT_EQ(e.sqlstate(), "25006") << e.what();
                EXPECT_FALSE(pgco::maybe_applied(e));
            }
            EXPECT_EQ(reader.stats().query_retries, retries_before);
            co_await reader.close();
        }
        co_await writer.close();
    });
}

// Failover under load. The load runs on a pool listing both hosts with
// target_session_attrs=read-write and a short retry schedule; meanwhile a read pool with
// prefer-standby keeps reading. The primary crashes (immediate stop) or is shut down (fast
// stop: sessions get 57P01, the standby receives all WAL first), 300 ms later the standby
// is promoted. Then:
// - the read-write pool is on the new primary, and reached it within the retry schedule: no
//   caller ran out of attempts, no read failed, no write failed "not applied";
// - the tables hold every acknowledged write exactly once, nothing twice, and writes whose
//   answer was lost in the crash are reported unknown (present or absent: both are counted);
// - the read pool, on the standby throughout, never failed.
class ha_failover : public testing::TestWithParam<std::string>
{};

TEST_P(ha_failover, to_the_promoted_standby_under_load)
{
    const std::string stop_mode = GetParam();
    topology_guard topology;
    log_capture log({"session is read-only", "Database connected successfully"}, 3000);
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            int old_primary = co_await primary_index();
            if (old_primary < 0)
                throw std::runtime_error("no node answers as the primary");
            int new_primary = 1 - old_primary;
            auto all = nodes();
            {
                auto admin = co_await connect_to(all[static_cast<std::size_t>(old_primary)].url);
                co_await pgco::chaos::create_tables(admin);
            }
            pgco::pool p(ex, pgco::pool_options::from_url(
                                 both_hosts("target_session_attrs=read-write&connection_limit=6&"
                                            "pool_timeout=5&connect_timeout=2&" +
                                            retry_schedule)));
            pgco::pool readers(ex, pgco::pool_options::from_url(both_hosts(
                                       "target_session_attrs=prefer-standby&connection_limit=2&"
                                       "pool_timeout=5&connect_timeout=2&" +
                                       retry_schedule)));
            pgco::chaos::load_options o;
            o.name = "failover";
            o.workers = 8;
            load l(p, o);

            // The read pool's loop: a read every 5 ms until told to stop.
            struct read_counts
            {
                std::uint64_t ok = 0, failed = 0, on_standby = 0, on_other = 0;
                std::string first_failure;
            } reads;
            bool stop_reading = false;
            const int reader_port = all[static_cast<std::size_t>(new_primary)].port;
            auto read_loop = [&]() -> awaitable<void> {
                while (!stop_reading) {
                    try {
                        auto where = co_await readers.query_one<server_role>(
                            "SELECT inet_server_port(), pg_is_in_recovery()");
                        ++reads.ok;
                        ++(where.port == reader_port ? reads.on_standby : reads.on_other);
                    } catch (const pgco::error& e) {
                        if (reads.failed++ == 0)
                            reads.first_failure = e.what();
                    }
                    co_await sleep_for(5ms);
                }
            };
            bool reader_done = false;
            asio::co_spawn(ex, read_loop(), [&](std::exception_ptr) { reader_done = true; });

            int stop_rc = -1, promote_rc = -1;
            clock_type::time_point stopped_at, promoted_at, first_write_at;
            auto chaos = [&]() -> awaitable<void> {
                co_await sleep_for(600ms);
                EXPECT_GT(l.counts(0).writes_ok, 0u) << "the load made no progress before";
                auto started = clock_type::now();
                const std::string stop_command = "primary-stop " + stop_mode;
                stop_rc = co_await sandbox(stop_command);
                stopped_at = clock_type::now();
                // The time a watchdog would need to notice; the pool meanwhile finds one host
                // refusing connections and the other read-only.
                co_await sleep_for(300ms);
                promote_rc = co_await sandbox("promote");
                promoted_at = clock_type::now();
                l.set_phase(1);
                // The first write started after the promotion that succeeded.
                while (l.counts(1).writes_ok == 0 && clock_type::now() - promoted_at < 15s)
                    co_await sleep_for(2ms);
                first_write_at = clock_type::now();
                std::cout << "[ha] primary stop took "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(stopped_at -
                                                                                   started)
                                 .count()
                          << " ms; promote "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(promoted_at -
                                                                                   stopped_at)
                                 .count()
                          << " ms after it; first write on the new primary "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(first_write_at -
                                                                                   promoted_at)
                                 .count()
                          << " ms after the promotion ("
                          << std::chrono::duration_cast<std::chrono::milliseconds>(first_write_at -
                                                                                   stopped_at)
                                 .count()
                          << " ms after the crash)" << std::endl;
                // Run on until the phase has some reads and writes behind it (at least 1 s).
                auto healthy_from = clock_type::now();
                while (clock_type::now() - healthy_from < 15s) {
                    co_await sleep_for(20ms);
                    if (clock_type::now() - healthy_from >= 1s && l.counts(1).reads_ok >= 10 &&
                        l.counts(1).writes_ok >= 10)
                        break;
                }
            };
            // The load runs until the scenario is over, then every worker finishes its
            // operation (each bounded by the retry schedule and its timeouts).
            bool load_done = false;
            std::exception_ptr load_failure;
            asio::co_spawn(ex, l.run(), [&](std::exception_ptr e) {
                load_failure = e;
                load_done = true;
            });
            std::exception_ptr chaos_failure;
            try {
                co_await chaos();
            } catch (...) {
                chaos_failure = std::current_exception();
            }
            l.stop();
            stop_reading = true;
            for (int i = 0; i < 6000 && !(load_done && reader_done); ++i)
                co_await sleep_for(5ms);
            EXPECT_TRUE(load_done && reader_done) << "the load did not end within 30 s";
            if (chaos_failure)
                std::rethrow_exception(chaos_failure);
            if (load_failure)
                std::rethrow_exception(load_failure);

            auto where =
                co_await p.query_one<server_role>("SELECT inet_server_port(), pg_is_in_recovery()");
            auto stats = p.stats();
            co_await p.close();
            co_await readers.close();

            // Checked on the new primary, directly.
            auto check = co_await connect_to(all[static_cast<std::size_t>(new_primary)].url);
            auto v = co_await l.verify(check);
            l.report("failover after a " + stop_mode + " stop", 1, stats.query_retries, v);
            std::cout << "[ha] read-write pool: connects " << stats.connections_opened
                      << ", connect failures " << stats.connect_failures << ", retries "
                      << stats.query_retries << "; 'session is read-only' logged "
                      << log.count("session is read-only") << " times\n"
                      << "[ha] read pool: reads ok " << reads.ok << " (on node " << new_primary
                      << ": " << reads.on_standby << ", elsewhere: " << reads.on_other
                      << "), failed " << reads.failed << std::endl;

            EXPECT_EQ(stop_rc, 0);
            EXPECT_EQ(promote_rc, 0);
            // On the new primary.
            EXPECT_EQ(where.port, all[static_cast<std::size_t>(new_primary)].port);
            EXPECT_FALSE(where.in_recovery);
            // Within the retry schedule: nobody ran out of attempts, so every read and every
            // write that could not have reached the old primary got through; writes in flight
            // at the crash may only be "unknown".
            auto t = l.total();
            EXPECT_EQ(t.gave_up, 0u) << first_failures(l);
            EXPECT_EQ(t.reads_failed, 0u) << first_failures(l);
            EXPECT_EQ(t.writes_not_applied + t.tx_not_applied, 0u) << first_failures(l);
            EXPECT_EQ(t.reads_wrong, 0u);
            EXPECT_LT(first_write_at - stopped_at, retry_schedule_total)
                << "the pool was not writing on the new primary within the retry schedule";
            // And healthy afterwards.
            const auto& after = l.counts(1);
            EXPECT_GT(after.writes_ok, 0u);
            EXPECT_GT(after.reads_ok, 0u);
            EXPECT_EQ(after.failures(), 0u) << first_failures(l);
            EXPECT_GT(stats.query_retries, 0u) << "the crash went unnoticed?";
            // The read pool stayed on the standby (now the primary) and never failed.
            EXPECT_GT(reads.ok, 0u);
            EXPECT_EQ(reads.failed, 0u) << reads.first_failure;
            EXPECT_EQ(reads.on_other, 0u);
        },
        scenario_limit);
    show_log_if_needed(log);
}

INSTANTIATE_TEST_SUITE_P(ha, ha_failover, testing::Values("immediate", "fast"),
                         [](const auto& info) { return "primary_stop_" + info.param; });
