// PgBouncer (issue 6, item 5): Debian's pgbouncer in transaction-pooling mode in front of the
// sandbox server (scripts/pgbouncer-sandbox; the CTest fixture pgbouncer_server starts it with
// default_pool_size = 2), and pools whose URL says pgbouncer=true.
//
// In transaction mode consecutive transactions of one client connection may run on different
// server connections, and one server connection serves many clients in turn. So a client must
// keep no named prepared statements across transactions (they would be missing on the next
// server connection: 26000, or already taken by another client there: 42P05) and assume no
// session state. These tests run the pool's statements, transactions and concurrent load from
// many client connections over the two server connections, repeat the same statement texts
// many times (what breaks a statement cache that is on), check that the server holds no named
// statements afterwards, and terminate PgBouncer's server connections under load.
//
// PgBouncer's server connections all use the database pgco_bouncer, so a direct connection to
// the sandbox (PGCO_SANDBOX_STATE) finds them by datname; other tests' sessions are untouched.

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

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::run;
using pgco::test::sleep_for;

namespace {

/// Server connections PgBouncer keeps per pool (pgbouncer-sandbox --pool-size, default 2).
constexpr std::int64_t server_pool_size = 2;

/// PgBouncer's URL (database "pgco" there, pgco_bouncer on the server) with a query.
std::string bouncer_url(const std::string& query)
{
    const char* state = std::getenv("PGCO_BOUNCER_STATE");
    if (!state || !*state)
        state = PGCO_BOUNCER_STATE_DIR; // where the pgbouncer_server fixture keeps it
    std::ifstream in(std::string(state) + "/url");
    std::string url;
    if (!std::getline(in, url) || url.empty())
        throw std::runtime_error(std::string("no PgBouncer URL in ") + state +
                                 "/url: run through ctest, whose pgbouncer_server fixture starts "
                                 "scripts/pgbouncer-sandbox");
    return url + "?" + query;
}

/// The sandbox server itself, database pgco_bouncer (what PgBouncer's connections use).
std::string direct_url()
{
    auto url = pgco::test::database_url();
    return url.substr(0, url.rfind('/')) + "/pgco_bouncer";
}

/// PgBouncer's server connections (everything on pgco_bouncer but the caller's own session).
awaitable<std::int64_t> server_connections(pgco::connection& admin)
{
    co_return co_await admin.query_one<std::int64_t>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgco_bouncer' AND "
        "backend_type = 'client backend' AND pid <> pg_backend_pid()");
}

/// Terminates them; returns how many.
awaitable<std::int64_t> kill_server_connections(pgco::connection& admin)
{
    co_return co_await admin.query_one<std::int64_t>(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = 'pgco_bouncer' AND backend_type = 'client backend' AND "
        "pid <> pg_backend_pid()");
}

/// True for the errors a statement cache behind PgBouncer produces.
bool is_prepared_statement_error(const pgco::error& e)
{
    std::string what = e.what();
    return e.sqlstate() == "26000" || e.sqlstate() == "42P05" ||
           what.find("prepared statement") != std::string::npos;
}

} // namespace

// Queries, typed parameters and results, and transactions (committed and rolled back) through
// PgBouncer.
TEST(pgbouncer, queries_and_transactions)
{
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(
            ex, pgco::pool_options::from_url(bouncer_url("pgbouncer=true&connection_limit=4")));
        EXPECT_TRUE(p.options().pgbouncer);
        auto database = co_await p.query_one<std::string>("SELECT current_database()");
        EXPECT_EQ(database, "pgco_bouncer");
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT $1::int8 * 3", std::int64_t{14}), 42);
        const std::string left = "pg", right = "bouncer";
        auto joined = co_await p.query_one<std::string>("SELECT $1::text || $2::text", left, right);
        EXPECT_EQ(joined, "pgbouncer");

        co_await p.execute("DROP TABLE IF EXISTS bouncer_tx");
        co_await p.execute("CREATE TABLE bouncer_tx (k int8, note text)");
        auto committed = [](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO bouncer_tx VALUES (1, 'a')");
            // Within one transaction the server connection stays the same.
            auto pid = co_await tx.query_one<std::int32_t>("SELECT pg_backend_pid()");
            EXPECT_EQ(co_await tx.query_one<std::int32_t>("SELECT pg_backend_pid()"), pid);
            co_await tx.execute("INSERT INTO bouncer_tx VALUES (2, 'b')");
        };
        co_await p.transaction(committed);
        auto rolled_back = [](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO bouncer_tx VALUES (3, 'c')");
            throw std::runtime_error("changed my mind");
        };
        bool threw = false;
        try {
            co_await p.transaction(rolled_back);
        } catch (const std::runtime_error&) {
            threw = true;
        }
        EXPECT_TRUE(threw);
        auto keys = co_await p.query<std::int64_t>("SELECT k FROM bouncer_tx ORDER BY k");
        EXPECT_EQ(keys, (std::vector<std::int64_t>{1, 2}));
        // A SQL error leaves the client connection usable.
        try {
            co_await p.execute("SELECT no_such_column FROM bouncer_tx");
            ADD_FAILURE() << "no error";
        } catch (const pgco::error& e) {
            EXPECT_EQ(e.sqlstate(), "42703") << e.what();
        }
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM bouncer_tx"), 2);
        co_await p.close();
    });
}

// The same statement texts 50 times from each of 32 coroutines over 16 client connections, which
// PgBouncer serves with 2 server connections: every transaction may land on either. A pool that
// kept named prepared statements would fail here with 26000 (prepared statement "..." does not
// exist) or 42P05 (already exists). The default statement_cache_size is left as it is: with
// pgbouncer=true the cache must be off anyway. Afterwards no server connection holds a named
// statement.
TEST(pgbouncer, same_statements_many_times_from_many_connections)
{
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await pgco::test::connected(direct_url());
            co_await admin.execute("DROP TABLE IF EXISTS bouncer_many");
            co_await admin.execute("CREATE TABLE bouncer_many (worker int, i int)");

            pgco::pool p(ex, pgco::pool_options::from_url(bouncer_url(
                                 "pgbouncer=true&connection_limit=16&pool_timeout=20")));
            constexpr int workers = 32, rounds = 50;
            std::uint64_t ok = 0, failed = 0, prepared_errors = 0;
            std::map<std::string, std::uint64_t> errors;
            std::set<std::int32_t> server_pids;
            std::int64_t most_server_connections = 0;
            int running = workers;
            auto worker = [&](int w) -> awaitable<void> {
                for (int i = 0; i < rounds; ++i) {
                    try {
                        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT $1::int8 + 1",
                                                                     std::int64_t{i}),
                                  i + 1);
                        server_pids.insert(
                            co_await p.query_one<std::int32_t>("SELECT pg_backend_pid()"));
                        EXPECT_EQ(
                            co_await p.execute("INSERT INTO bouncer_many VALUES ($1, $2)", w, i),
                            1u);
                        auto tx = [&](pgco::transaction& t) -> awaitable<void> {
                            co_await t.execute("UPDATE bouncer_many SET i = i WHERE worker = $1 "
                                               "AND i = $2",
                                               w, i);
                            co_await t.query_one<std::int64_t>(
                                "SELECT count(*) FROM bouncer_many WHERE worker = $1", w);
                        };
                        co_await p.transaction(tx);
                        ++ok;
                    } catch (const pgco::error& e) {
                        ++failed;
                        prepared_errors += is_prepared_statement_error(e);
                        ++errors[e.sqlstate() + " " + e.what()];
                    }
                }
            };
            for (int w = 0; w < workers; ++w)
                asio::co_spawn(ex, worker(w), [&](std::exception_ptr e) {
                    --running;
                    if (e)
                        ADD_FAILURE() << "worker ended with an exception";
                });
            auto start = clock_type::now();
            while (running > 0 && clock_type::now() - start < 60s) {
                most_server_connections =
                    std::max(most_server_connections, co_await server_connections(admin));
                co_await sleep_for(5ms);
            }
            auto stats = p.stats();
            std::cout << "[pgbouncer] " << workers << " coroutines x " << rounds << " rounds in "
                      << pgco::test::ms_since(start) << " ms: ok " << ok << ", failed " << failed
                      << "; client connections opened " << stats.connections_opened
                      << ", server backends seen " << server_pids.size()
                      << ", most server connections at once " << most_server_connections
                      << std::endl;
            for (const auto& [what, n] : errors)
                std::cout << "[pgbouncer]   " << n << " x " << what << std::endl;
            EXPECT_EQ(running, 0);
            EXPECT_EQ(failed, 0u);
            EXPECT_EQ(prepared_errors, 0u);
            EXPECT_EQ(ok, std::uint64_t{workers} * rounds);
            EXPECT_EQ(co_await admin.query_one<std::int64_t>("SELECT count(*) FROM bouncer_many"),
                      std::int64_t{workers} * rounds);
            // Client connections shared few server connections.
            EXPECT_GT(stats.connections_opened, std::uint64_t(server_pool_size));
            EXPECT_LE(most_server_connections, server_pool_size);
            EXPECT_LE(std::int64_t(server_pids.size()), server_pool_size + 2)
                << "more server backends than PgBouncer's pool (plus replacements)";

            // No server connection holds a named statement: asked through PgBouncer (each
            // statement lands on one of its server connections), 20 times to meet both.
            std::int64_t named = 0;
            for (int i = 0; i < 20; ++i)
                named += co_await p.query_one<std::int64_t>(
                    "SELECT count(*) FROM pg_prepared_statements");
            EXPECT_EQ(named, 0) << "named prepared statements were left on PgBouncer's server "
                                   "connections: is the statement cache on with pgbouncer=true?";
            co_await p.close();
        },
        90s);
}

// PgBouncer's server connections are terminated (pg_terminate_backend) three times, 300 ms
// apart, under the fault suite's load on 12 client connections. No acknowledged write is lost
// or applied twice, writes whose answer was lost are reported unknown, and once the kills are
// over every operation succeeds.
TEST(pgbouncer, server_connections_killed_under_load)
{
    pgco::chaos::log_capture log;
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await pgco::test::connected(direct_url());
            co_await pgco::chaos::create_tables(admin);
            pgco::pool p(ex, pgco::pool_options::from_url(
                                 bouncer_url("pgbouncer=true&connection_limit=12&pool_timeout=10&"
                                             "retry_backoff=0,0.1,0.5")));
            pgco::chaos::load_options o;
            o.name = "pgbouncer";
            o.workers = 12;
            pgco::chaos::load l(p, o);
            bool load_done = false;
            std::exception_ptr load_failure;
            asio::co_spawn(ex, l.run(), [&](std::exception_ptr e) {
                load_failure = e;
                load_done = true;
            });
            std::int64_t killed = 0;
            co_await sleep_for(500ms);
            for (int round = 0; round < 3; ++round) {
                killed += co_await kill_server_connections(admin);
                co_await sleep_for(300ms);
            }
            l.set_phase(1);
            auto healthy_from = clock_type::now();
            while (clock_type::now() - healthy_from < 15s) {
                co_await sleep_for(20ms);
                if (clock_type::now() - healthy_from >= 1s && l.counts(1).reads_ok >= 10 &&
                    l.counts(1).writes_ok >= 10)
                    break;
            }
            l.stop();
            for (int i = 0; i < 6000 && !load_done; ++i)
                co_await sleep_for(5ms);
            EXPECT_TRUE(load_done);
            if (load_failure)
                std::rethrow_exception(load_failure);
            auto stats = p.stats();
            co_await p.close();

            auto v = co_await l.verify(admin);
            l.report("server_connections_killed_under_load", std::uint64_t(killed),
                     stats.query_retries, v);
            std::cout << "[pgbouncer] server connections terminated: " << killed
                      << "; client connections opened " << stats.connections_opened << std::endl;
            EXPECT_GE(killed, 3);
            auto t = l.total();
            EXPECT_EQ(t.reads_wrong, 0u);
            EXPECT_EQ(t.gave_up, 0u);
            EXPECT_EQ(t.reads_failed, 0u);
            const auto& after = l.counts(1);
            EXPECT_GT(after.writes_ok, 0u);
            EXPECT_EQ(after.failures(), 0u);
        },
        90s);
    if (testing::Test::HasFailure())
        log.dump();
}
