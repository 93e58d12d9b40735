// The retry layer against the real server: statements and transactions that meet a killed
// backend are repeated only where that cannot apply them twice.

#include "support/fault_proxy.hpp"
#include "support/server.hpp"

#include <pgco/log.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <sstream>
#include <stdexcept>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::connected;
using pgco::test::database_url;
using pgco::test::expect_error;
using pgco::test::ms_since;
using pgco::test::run;
using pgco::test::server_port;
using pgco::test::sleep_for;

namespace {

/// Captures what pgco logs while it lives.
class log_capture
{
public:
    log_capture()
    {
        auto l = std::make_shared<spdlog::logger>(
            "pgco", std::make_shared<spdlog::sinks::ostream_sink_mt>(out_));
        l->set_level(spdlog::level::debug);
        pgco::set_logger(l);
    }
    ~log_capture() { pgco::set_logger(nullptr); }
    std::string text() const { return out_.str(); }
    bool has(std::string_view s) const { return text().find(s) != std::string::npos; }

private:
    std::ostringstream out_;
};

/// Terminates backend `pid` after `delay`, from its own connection.
void kill_later(const asio::any_io_executor& ex, int pid, std::chrono::milliseconds delay)
{
    asio::co_spawn(
        ex,
        [ex, pid, delay]() -> awaitable<void> {
            pgco::connection admin(ex);
            co_await admin.connect(database_url());
            co_await sleep_for(delay);
            co_await admin.execute("SELECT pg_terminate_backend($1)", pid);
        },
        asio::detached);
}

std::string unique_table()
{
    static std::atomic<int> n{0};
    return "retry_t_" + std::to_string(::getpid()) + "_" + std::to_string(++n);
}

/// The test URL with host:port replaced by the proxy's.
std::string through(const pgco::test::fault_proxy& proxy)
{
    return pgco::test::url_via_port(proxy.port());
}

/// Makes COMMIT on `table` take 0.5 s: a deferred constraint trigger sleeps before the commit
/// record is written, which leaves time to break things in the middle of COMMIT.
awaitable<void> make_commit_slow(pgco::pool& p, const std::string& table)
{
    co_await p.execute("CREATE FUNCTION " + table +
                       "_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM "
                       "pg_sleep(0.5); RETURN NULL; END $$");
    co_await p.execute("CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON " + table +
                       " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " + table +
                       "_slow()");
}

awaitable<void> drop_slow_commit_table(pgco::pool& p, const std::string& table)
{
    co_await p.execute("DROP TABLE " + table);
    co_await p.execute("DROP FUNCTION " + table + "_slow()");
}

pgco::pool_options one_connection()
{
    return pgco::pool_options::from_url(database_url() + "?connection_limit=1");
}

} // namespace

TEST(retry, statement_killed_mid_flight_is_retried_transparently)
{
    log_capture log;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, one_connection());
        auto pid = co_await p.query_one<int>("SELECT pg_backend_pid()");
        kill_later(ex, pid, 150ms);
        // The server answers 57P01 instead of a result: the statement had no effect.
        auto v = co_await p.query_one<std::string>("SELECT 'ok' FROM pg_sleep(0.6)");
        EXPECT_EQ(v, "ok");
        EXPECT_EQ(p.stats().query_retries, 1u);
        EXPECT_NE(co_await p.query_one<int>("SELECT pg_backend_pid()"), pid);
        co_await p.close();
    });
    EXPECT_TRUE(log.has("Connection error detected, attempting to reconnect...")) << log.text();
    EXPECT_TRUE(log.has("Retrying query after reconnection...")) << log.text();
    EXPECT_TRUE(log.has("Query succeeded after reconnection")) << log.text();
}

TEST(retry, write_killed_mid_statement_is_applied_exactly_once)
{
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        auto pid = co_await p.query_one<int>("SELECT pg_backend_pid()");
        kill_later(ex, pid, 150ms);
        auto n = co_await p.execute("INSERT INTO " + table + " SELECT $1 FROM pg_sleep(0.6)", 7);
        EXPECT_EQ(n, 1u);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        EXPECT_EQ(p.stats().query_retries, 1u);
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
}

TEST(retry, no_retry_mode_reports_the_failure_at_once)
{
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, one_connection());
        auto pid = co_await p.query_one<int>("SELECT pg_backend_pid()");
        kill_later(ex, pid, 150ms);
        auto e = co_await expect_error([&]() -> awaitable<void> {
            co_await p.execute(pgco::no_retry, "SELECT pg_sleep(0.6)");
        });
        EXPECT_EQ(e.sqlstate(), "57P01") << e.what();
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_FALSE(pgco::maybe_applied(e));
        EXPECT_EQ(p.stats().query_retries, 0u);
        co_await p.close();
    });
}

TEST(retry, sql_errors_are_never_retried)
{
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor, one_connection());
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await p.execute("SELECT * FROM no_such_table_here"); });
        EXPECT_EQ(e.sqlstate(), "42P01");
        EXPECT_EQ(p.stats().query_retries, 0u);
        co_await p.close();
    });
}

TEST(retry, transaction_commits_and_returns_a_value)
{
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        auto count = co_await p.transaction([&](pgco::transaction& tx) -> awaitable<std::int64_t> {
            co_await tx.execute("INSERT INTO " + table + " VALUES ($1), ($2)", 1, 2);
            co_return co_await tx.query_one<std::int64_t>("SELECT count(*) FROM " + table);
        });
        EXPECT_EQ(count, 2);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 2);
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
}

TEST(retry, transaction_rolls_back_when_the_function_throws)
{
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        bool thrown = false;
        try {
            co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
                co_await tx.execute("INSERT INTO " + table + " VALUES (1)");
                throw std::runtime_error("application changed its mind");
            });
        } catch (const std::runtime_error&) {
            thrown = true;
        }
        EXPECT_TRUE(thrown);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 0);
        EXPECT_EQ(p.stats().idle, 1u); // rolled back and reused, not closed
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
}

TEST(retry, transaction_replays_after_a_serialization_failure)
{
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        int runs = 0;
        co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO " + table + " VALUES (1)");
            if (++runs == 1)
                co_await tx.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = "
                                    "'40001'; END $$");
        });
        EXPECT_EQ(runs, 2);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
}

TEST(retry, transaction_replays_after_its_backend_was_killed_before_commit)
{
    auto table = unique_table();
    log_capture log;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        int runs = 0;
        co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO " + table + " VALUES (1)");
            if (++runs == 1) {
                kill_later(ex, tx.conn().backend_pid(), 100ms);
                co_await tx.execute("SELECT pg_sleep(0.6)");
            }
        });
        EXPECT_EQ(runs, 2);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
    EXPECT_TRUE(log.has("Retrying transaction after reconnection...")) << log.text();
    EXPECT_TRUE(log.has("Transaction succeeded after reconnection")) << log.text();
}

TEST(retry, backend_killed_during_commit_is_resolved_not_guessed)
{
    // A deferred constraint trigger makes COMMIT itself take a while; the backend is killed
    // inside it. The server reports 57P01 for the COMMIT: not committed, so the transaction is
    // replayed, and the row exists exactly once.
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::pool p(ex, one_connection());
        co_await p.execute("CREATE TABLE " + table + " (k int PRIMARY KEY)");
        co_await make_commit_slow(p, table);
        int runs = 0;
        co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO " + table + " VALUES (1)");
            if (++runs == 1)
                kill_later(ex, tx.conn().backend_pid(), 150ms); // lands inside COMMIT
        });
        EXPECT_EQ(runs, 2);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        co_await drop_slow_commit_table(p, table);
        co_await p.close();
    });
}

TEST(retry, commit_of_a_transaction_with_a_swallowed_error_reports_the_rollback)
{
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor, one_connection());
        auto e = co_await expect_error([&]() -> awaitable<void> {
            co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
                try {
                    co_await tx.execute("SELECT * FROM no_such_table_either");
                } catch (const pgco::error&) {
                    // swallowed: the transaction is nevertheless aborted
                }
            });
        });
        EXPECT_EQ(e.code(), pgco::errc::transaction_rolled_back) << e.what();
        co_await p.close();
    });
}

TEST(retry, giving_up_lists_every_attempt)
{
    log_capture log;
    run([&]() -> awaitable<void> {
        pgco::pool p(co_await asio::this_coro::executor,
                     pgco::pool_options::from_url(database_url() +
                                                  "?query_timeout=0.2&retry_backoff=0,0.1,0.2"));
        auto start = std::chrono::steady_clock::now();
        // Each try times out after sending: repeated only because the caller says it may be.
        auto e = co_await expect_error([&]() -> awaitable<void> {
            co_await p.execute(pgco::idempotent, "SELECT pg_sleep(2)");
        });
        auto elapsed = std::chrono::steady_clock::now() - start;
        EXPECT_EQ(e.code(), pgco::errc::query_timeout);
        EXPECT_NE(std::string(e.what()).find("Query failed after 4 attempts: 1) P1008"),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("4) P1008"), std::string::npos) << e.what();
        EXPECT_TRUE(pgco::maybe_applied(e));
        EXPECT_EQ(p.stats().query_retries, 3u);
        EXPECT_GE(elapsed, 4 * 200ms + 300ms); // four timeouts and the pauses between them
        EXPECT_LT(elapsed, 5s);

        // Without `idempotent` a statement that may have run is not repeated.
        auto once = co_await expect_error(
            [&]() -> awaitable<void> { co_await p.execute("SELECT pg_sleep(2)"); });
        EXPECT_EQ(once.code(), pgco::errc::query_timeout);
        EXPECT_EQ(p.stats().query_retries, 3u);
        co_await p.close();
    });
    EXPECT_TRUE(log.has("Connection attempt 1/3 failed")) << log.text();
    EXPECT_TRUE(log.has("Retrying in 100ms...")) << log.text();
    EXPECT_TRUE(log.has("Query failed after 4 attempts")) << log.text();
}

TEST(retry, commit_whose_answer_was_lost_is_looked_up_not_replayed)
{
    // COMMIT is made slow by a deferred trigger; the proxy cuts the link while it runs. The
    // server still commits (it notices the client is gone only when it answers), so the
    // transaction must be reported committed, not replayed: the row exists once.
    auto table = unique_table();
    log_capture log;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::test::fault_proxy proxy("127.0.0.1", server_port());
        pgco::pool p(ex, pgco::pool_options::from_url(through(proxy) + "?connection_limit=1"));
        co_await p.execute("CREATE TABLE " + table + " (k int)");
        co_await make_commit_slow(p, table);
        int runs = 0;
        co_await p.transaction([&](pgco::transaction& tx) -> awaitable<void> {
            co_await tx.execute("INSERT INTO " + table + " VALUES (1)");
            if (++runs == 1) {
                asio::co_spawn(
                    ex,
                    [&proxy]() -> awaitable<void> {
                        co_await sleep_for(150ms); // COMMIT is running by then
                        proxy.cut_all();
                    },
                    asio::detached);
            }
        });
        EXPECT_EQ(runs, 1);
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        co_await drop_slow_commit_table(p, table);
        co_await p.close();
    });
    EXPECT_TRUE(log.has("Connection lost after COMMIT was sent")) << log.text();
    EXPECT_TRUE(log.has("did commit")) << log.text();
}

TEST(retry, write_whose_answer_was_lost_is_reported_maybe_applied_not_repeated)
{
    // The link is cut while an INSERT runs; the server finishes it and commits. A retry would
    // insert a second row: pgco reports the outcome as unknown instead.
    auto table = unique_table();
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        pgco::test::fault_proxy proxy("127.0.0.1", server_port());
        pgco::pool p(ex, pgco::pool_options::from_url(through(proxy) + "?connection_limit=1"));
        co_await p.execute("CREATE TABLE " + table + " (k int)");
        asio::co_spawn(
            ex,
            [&proxy]() -> awaitable<void> {
                co_await sleep_for(150ms);
                proxy.cut_all();
            },
            asio::detached);
        auto e = co_await expect_error([&]() -> awaitable<void> {
            co_await p.execute("INSERT INTO " + table + " SELECT 1 FROM pg_sleep(0.4)");
        });
        EXPECT_EQ(e.code(), pgco::errc::connection_lost) << e.what();
        EXPECT_TRUE(pgco::maybe_applied(e));
        EXPECT_EQ(classify(e), pgco::retry_decision::retry_if_idempotent);
        EXPECT_EQ(p.stats().query_retries, 0u);
        co_await sleep_for(600ms); // the server finishes the statement meanwhile
        EXPECT_EQ(co_await p.query_one<std::int64_t>("SELECT count(*) FROM " + table), 1);
        co_await p.execute("DROP TABLE " + table);
        co_await p.close();
    });
}

TEST(retry, the_callers_cancellation_ends_the_loop_at_once)
{
    using namespace asio::experimental::awaitable_operators;
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        unsigned short port;
        {
            asio::ip::tcp::acceptor a(ex, {asio::ip::make_address("127.0.0.1"), 0});
            port = a.local_endpoint().port();
        } // nothing listens there now: every attempt fails, then waits 5 s
        pgco::pool p(
            ex, pgco::pool_options::from_url("postgresql://u:pw@127.0.0.1:" + std::to_string(port) +
                                             "/db?retry_backoff=0,5&connect_timeout=1"));
        asio::steady_timer timer(ex, 300ms);
        auto start = std::chrono::steady_clock::now();
        auto winner = co_await (p.execute("SELECT 1") || timer.async_wait(asio::use_awaitable));
        EXPECT_EQ(winner.index(), 1u);
        EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
        EXPECT_GE(p.stats().query_retries, 1u); // it was inside the 5 s pause
        co_await p.close();
    });
}
