// The statement cache (per connection) and multiplexing (pool), against the real server started
// by the CTest fixture.

#include "support/server.hpp"

#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/error.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <typeinfo>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::connected;
using pgco::test::database_url;
using pgco::test::eventually;
using pgco::test::expect_error;
using pgco::test::ms_since;
using pgco::test::run;
using pgco::test::sleep_for;
using pgco::test::url_with;

namespace {

/// A name (table, application_name) no other test process running in parallel uses.
std::string cm_unique(const std::string& prefix)
{
    static int counter = 0;
    return prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
}

/// Named prepared statements pgco made on this session (the counting statement included once
/// it is cached itself).
awaitable<std::int64_t> pgco_statements(pgco::connection& c)
{
    co_return co_await c.query_one<std::int64_t>(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgco_%'");
}

/// Named prepared statements pgco made on this session for exactly `sql`.
awaitable<std::int64_t> pgco_statements_for(pgco::connection& c, const std::string& sql)
{
    co_return co_await c.query_one<std::int64_t>(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgco_%' AND statement = $1",
        sql);
}

struct two_ints
{
    int a;
    std::optional<int> b;
};

/// Drops `table` on a connection of its own (tests clean up even after a failed expectation).
/// Runs `op`; if it throws, notes the error's code and text in `code` and `what` (for
/// assertions after an `||` has swallowed the exception) and rethrows it.
template <class Op>
awaitable<void> noting_error(std::error_code& code, std::string& what, Op op)
{
    try {
        co_await op();
    } catch (const pgco::error& e) {
        code = e.code();
        what = e.what();
        throw;
    } catch (const std::exception& e) {
        what = std::string("not a pgco::error: ") + typeid(e).name() + ": " + e.what();
        throw;
    }
}

awaitable<void> drop_table(const std::string& table)
{
    auto c = co_await connected();
    co_await c.exec("DROP TABLE IF EXISTS " + table);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Statement cache
// ---------------------------------------------------------------------------------------------

TEST(cache, repeated_statement_is_prepared_once_and_parameter_types_are_separate)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            const std::string sql = "SELECT $1::int4 + 1";
            EXPECT_EQ(co_await c.query_one<int>(sql, 1), 2);
            EXPECT_EQ(co_await c.query_one<int>(sql, 2), 3);
            // Prepared on the server, under pgco's name, exactly once.
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);
            EXPECT_GE(co_await pgco_statements(c), 1);
            EXPECT_EQ(co_await c.query_one<int>(sql, 41), 42);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);

            // The same text with int4 and then int8 parameters: two statements on the server.
            const std::string wide = "SELECT $1::int8 * 2";
            std::int32_t small = 21;
            std::int64_t big = 5'000'000'000LL;
            EXPECT_EQ(co_await c.query_one<std::int64_t>(wide, small), 42);
            EXPECT_EQ(co_await c.query_one<std::int64_t>(wide, big), 10'000'000'000LL);
            EXPECT_EQ(co_await c.query_one<std::int64_t>(wide, small), 42);
            EXPECT_EQ(co_await c.query_one<std::int64_t>(wide, big), 10'000'000'000LL);
            EXPECT_EQ(co_await pgco_statements_for(c, wide), 2);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
        },
        10s);
}

TEST(cache, schema_change_that_changes_the_result_type_prepares_again)
{
    const auto table = cm_unique("cache_schema");
    run(
        [&]() -> awaitable<void> {
            auto c = co_await connected();
            co_await c.exec("CREATE TABLE " + table + " (a int)");
            co_await c.exec("INSERT INTO " + table + " VALUES (1)");
            const std::string select = "SELECT * FROM " + table;
            const std::vector<int> just_one{1};
            auto first = co_await c.query<int>(select);
            EXPECT_EQ(first, just_one);
            auto again = co_await c.query<int>(select); // cached now
            EXPECT_EQ(again, just_one);
            EXPECT_EQ(co_await pgco_statements_for(c, select), 1);

            co_await c.exec("ALTER TABLE " + table + " ADD COLUMN b int");
            co_await c.exec("UPDATE " + table + " SET b = 2");
            // The cached plan now returns two columns: 0A000 outside a transaction, prepared
            // again and run once more.
            auto rows = co_await c.query<two_ints>(select);
            EXPECT_EQ(rows.size(), 1u);
            if (!rows.empty()) {
                EXPECT_EQ(rows[0].a, 1);
                EXPECT_EQ(rows[0].b, std::optional<int>(2));
            }
            rows = co_await c.query<two_ints>(select);
            EXPECT_EQ(rows.size(), 1u);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            // The single-column view of it is now an error, not a wrong result.
            auto one_column = [&]() -> awaitable<void> { co_await c.query<int>(select); };
            auto e = co_await expect_error(one_column);
            EXPECT_EQ(e.code(), pgco::errc::column_count_mismatch) << e.what();
            co_await c.exec("DROP TABLE " + table);
        },
        10s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(cache, statement_deallocated_behind_pgcos_back_is_prepared_again)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            const std::string sql = "SELECT $1::int4 * 10";
            EXPECT_EQ(co_await c.query_one<int>(sql, 1), 10);
            EXPECT_EQ(co_await c.query_one<int>(sql, 2), 20);
            auto find_name = [&]() -> awaitable<std::string> {
                co_return co_await c.query_one<std::string>(
                    "SELECT name FROM pg_prepared_statements WHERE statement = $1", sql);
            };
            auto name = co_await find_name();
            EXPECT_TRUE(name.starts_with("pgco_")) << name;

            // Outside a transaction: 26000, prepared again, run again.
            co_await c.exec("DEALLOCATE " + name);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 0);
            EXPECT_EQ(co_await c.query_one<int>(sql, 3), 30);
            EXPECT_EQ(co_await c.query_one<int>(sql, 4), 40);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);

            // Inside a transaction the error aborts the transaction: preparing again could not
            // undo that, so the caller must get the error (never a result).
            name = co_await find_name();
            co_await c.exec("DEALLOCATE " + name);
            co_await c.exec("BEGIN");
            auto in_tx = [&]() -> awaitable<void> {
                auto v = co_await c.query_one<int>(sql, 5);
                ADD_FAILURE() << "a statement in a transaction got a result (" << v
                              << ") after its prepared statement was deallocated";
            };
            auto e = co_await expect_error(in_tx);
            EXPECT_EQ(e.code(), pgco::errc::server_error) << e.what();
            EXPECT_EQ(e.sqlstate(), "26000") << e.what();
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::failed);
            co_await c.exec("ROLLBACK");
            // After the transaction the statement works again.
            EXPECT_EQ(co_await c.query_one<int>(sql, 6), 60);
            EXPECT_EQ(co_await c.query_one<int>(sql, 7), 70);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
        },
        10s);
}

TEST(cache, statement_first_prepared_in_a_rolled_back_transaction_is_usable_in_the_next_one)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            const std::string sql = "SELECT $1::int4 * 3";
            co_await c.exec("BEGIN");
            EXPECT_EQ(co_await c.query_one<int>(sql, 2), 6); // first sight, inside the block
            co_await c.exec("ROLLBACK");
            // The server keeps prepared statements across a rollback; if it did not, the
            // cached name would fail with 26000 inside the next transaction.
            co_await c.exec("BEGIN");
            EXPECT_EQ(co_await c.query_one<int>(sql, 3), 9);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::in_transaction);
            co_await c.exec("COMMIT");
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);
        },
        10s);
}

TEST(cache, discard_all_and_deallocate_all_clear_the_cache)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            const std::string sql = "SELECT $1::int4 - 1";
            EXPECT_EQ(co_await c.query_one<int>(sql, 10), 9);
            EXPECT_EQ(co_await c.query_one<int>(sql, 11), 10);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);

            co_await c.exec("DISCARD ALL");
            EXPECT_EQ(co_await c.query_one<int>(sql, 12), 11);
            EXPECT_EQ(co_await c.query_one<int>(sql, 13), 12);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);

            co_await c.exec("DEALLOCATE ALL");
            EXPECT_EQ(co_await c.query_one<int>(sql, 14), 13);
            EXPECT_EQ(co_await c.query_one<int>(sql, 15), 14);
            EXPECT_EQ(co_await pgco_statements_for(c, sql), 1);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
        },
        10s);
}

TEST(cache, small_cache_evicts_and_deallocates)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected(url_with("statement_cache_size=2"));
            std::vector<std::string> statements;
            for (int k = 0; k < 6; ++k)
                statements.push_back("SELECT $1::int4 + " + std::to_string(k * 100));
            std::int64_t most = 0;
            for (int round = 0; round < 2; ++round) {
                for (int k = 0; k < 6; ++k) {
                    int v = co_await c.query_one<int>(statements[k], round);
                    EXPECT_EQ(v, round + k * 100) << statements[k];
                    v = co_await c.query_one<int>(statements[k], round + 1);
                    EXPECT_EQ(v, round + 1 + k * 100) << statements[k];
                    if (round == 1)
                        most = std::max(most, co_await pgco_statements(c));
                }
            }
            // Two cached, and at most one evicted statement whose DEALLOCATE waits for the
            // next round trip.
            EXPECT_LE(most, 3);
            EXPECT_GE(most, 1);
            EXPECT_LE(co_await pgco_statements(c), 3);
            for (int k = 0; k < 6; ++k)
                EXPECT_EQ(co_await c.query_one<int>(statements[k], 7), 7 + k * 100);
            EXPECT_LE(co_await pgco_statements(c), 3);
        },
        10s);
}

TEST(cache, pgbouncer_mode_and_size_zero_prepare_nothing)
{
    for (const char* params : {"pgbouncer=true", "statement_cache_size=0"}) {
        SCOPED_TRACE(params);
        run(
            [params]() -> awaitable<void> {
                auto c = co_await connected(url_with(params));
                for (int i = 0; i < 5; ++i) {
                    EXPECT_EQ(co_await c.query_one<int>("SELECT $1::int4", i), i);
                    EXPECT_EQ(co_await c.query_one<std::string>("SELECT 'x' || $1::text", "y"),
                              "xy");
                }
                EXPECT_EQ(co_await c.query_one<std::int64_t>(
                              "SELECT count(*) FROM pg_prepared_statements"),
                          0);
            },
            10s);
    }
}

TEST(cache, syntax_error_on_first_sight_is_reported_and_not_cached)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            const std::string bad = "SELECT 1 +";
            auto run_bad = [&]() -> awaitable<void> { co_await c.query_one<int>(bad); };
            for (int attempt = 0; attempt < 2; ++attempt) {
                auto e = co_await expect_error(run_bad);
                EXPECT_EQ(e.code(), pgco::errc::server_error) << e.what();
                EXPECT_EQ(e.sqlstate(), "42601") << "attempt " << attempt << ": " << e.what();
                EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            }
            EXPECT_EQ(co_await pgco_statements_for(c, bad), 0);
            EXPECT_EQ(co_await c.query_one<int>("SELECT $1::int4 + 2", 40), 42);
            EXPECT_EQ(co_await c.query_one<int>("SELECT $1::int4 + 2", 1), 3);

            // An error while executing (the Parse succeeded): the statement stays usable.
            const std::string divide = "SELECT 100 / $1::int4";
            int zero = 0;
            auto run_divide = [&]() -> awaitable<void> { co_await c.query_one<int>(divide, zero); };
            for (int attempt = 0; attempt < 2; ++attempt) {
                auto e = co_await expect_error(run_divide);
                EXPECT_EQ(e.sqlstate(), "22012") << "attempt " << attempt << ": " << e.what();
            }
            EXPECT_EQ(co_await c.query_one<int>(divide, 4), 25);
            EXPECT_EQ(co_await c.query_one<int>(divide, 5), 20);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
        },
        10s);
}

TEST(cache, cancelled_first_sight_statement_leaves_the_connection_usable)
{
    using namespace asio::experimental::awaitable_operators;
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto c = co_await connected();
            const std::string cached = "SELECT $1::int4 + 1000";
            EXPECT_EQ(co_await c.query_one<int>(cached, 1), 1001);
            EXPECT_EQ(co_await c.query_one<int>(cached, 2), 1002);

            const std::string sleeper = "SELECT 1 FROM pg_sleep($1::float8)";
            double long_sleep = 5.0;
            asio::steady_timer timer(ex, 100ms);
            auto start = clock_type::now();
            auto slow = c.query_one<int>(sleeper, long_sleep);
            auto tick = timer.async_wait(asio::use_awaitable);
            auto winner = co_await (std::move(slow) || std::move(tick));
            EXPECT_EQ(winner.index(), 1u);
            EXPECT_LT(ms_since(start), 2000);

            // The connection discards what is left of the cancelled request.
            start = clock_type::now();
            EXPECT_EQ(co_await c.query_one<int>(cached, 3), 1003);
            EXPECT_LT(ms_since(start), 3000);
            EXPECT_EQ(co_await c.query_one<int>("SELECT $1::int4 + 2000", 4), 2004);
            double no_sleep = 0.0;
            EXPECT_EQ(co_await c.query_one<int>(sleeper, no_sleep), 1);
            EXPECT_EQ(co_await c.query_one<int>(sleeper, no_sleep), 1);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
        },
        10s);
}

// ---------------------------------------------------------------------------------------------
// Multiplexing
// ---------------------------------------------------------------------------------------------

TEST(mux, two_hundred_callers_share_one_connection_in_batches)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            constexpr int callers = 200;
            int done = 0, correct = 0, failed = 0;
            for (int i = 0; i < callers; ++i)
                asio::co_spawn(
                    ex,
                    [&, i]() -> awaitable<void> {
                        try {
                            if (co_await p.query_one<int>("SELECT $1::int4", i) == i)
                                ++correct;
                        } catch (const std::exception& e) {
                            if (failed++ == 0)
                                ADD_FAILURE() << "caller " << i << ": " << e.what();
                        }
                        ++done;
                    },
                    asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return done == callers; }, 8s));
            EXPECT_EQ(correct, callers);
            EXPECT_EQ(failed, 0);
            auto s = p.stats();
            EXPECT_GT(s.statements_multiplexed, 0u);
            EXPECT_LT(s.pipeline_batches, static_cast<std::uint64_t>(callers));
            EXPECT_GT(s.pipeline_batches, 0u);
            EXPECT_EQ(s.connections_opened, 1u);
            co_await p.close();
        },
        10s);
}

TEST(mux, a_failing_statement_fails_alone_and_nothing_is_applied_twice)
{
    const auto table = cm_unique("mux_isolation");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int PRIMARY KEY)");
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";

            struct outcome
            {
                int id = 0; // 0: the division
                bool finished = false;
                std::uint64_t affected = 0;
                std::string sqlstate; // of a server error
                std::string other;    // any other failure
            };
            std::vector<outcome> outcomes;
            outcomes.reserve(60);
            auto spawn_insert = [&](int id) {
                outcomes.push_back({id});
                std::size_t slot = outcomes.size() - 1;
                asio::co_spawn(
                    ex,
                    [&, slot, id]() -> awaitable<void> {
                        try {
                            outcomes[slot].affected = co_await p.execute(insert, id);
                        } catch (const pgco::error& e) {
                            if (e.code() == pgco::errc::server_error)
                                outcomes[slot].sqlstate = e.sqlstate();
                            else
                                outcomes[slot].other = e.what();
                        } catch (const std::exception& e) {
                            outcomes[slot].other = e.what();
                        }
                        outcomes[slot].finished = true;
                    },
                    asio::detached);
            };
            auto spawn_division = [&] {
                outcomes.push_back({0});
                std::size_t slot = outcomes.size() - 1;
                asio::co_spawn(
                    ex,
                    [&, slot]() -> awaitable<void> {
                        try {
                            co_await p.query_one<int>("SELECT 1/0");
                            outcomes[slot].other = "SELECT 1/0 returned a value";
                        } catch (const pgco::error& e) {
                            if (e.code() == pgco::errc::server_error)
                                outcomes[slot].sqlstate = e.sqlstate();
                            else
                                outcomes[slot].other = e.what();
                        } catch (const std::exception& e) {
                            outcomes[slot].other = e.what();
                        }
                        outcomes[slot].finished = true;
                    },
                    asio::detached);
            };
            for (int id = 1; id <= 50; ++id) {
                spawn_insert(id);
                if (id % 10 == 0)
                    spawn_insert(id); // the duplicate
                if (id % 16 == 0)
                    spawn_division();
            }
            EXPECT_EQ(outcomes.size(), 58u);
            EXPECT_TRUE(co_await eventually(
                [&] {
                    return std::all_of(outcomes.begin(), outcomes.end(),
                                       [](const outcome& o) { return o.finished; });
                },
                8s));

            std::map<int, int> ok_per_id, dup_per_id;
            int divisions_failed = 0;
            for (const auto& o : outcomes) {
                EXPECT_TRUE(o.other.empty()) << "id " << o.id << ": " << o.other;
                if (o.id == 0) {
                    EXPECT_EQ(o.sqlstate, "22012");
                    divisions_failed += o.sqlstate == "22012";
                } else if (o.sqlstate.empty() && o.other.empty()) {
                    EXPECT_EQ(o.affected, 1u) << "id " << o.id;
                    ++ok_per_id[o.id];
                } else {
                    EXPECT_EQ(o.sqlstate, "23505") << "id " << o.id;
                    ++dup_per_id[o.id];
                }
            }
            EXPECT_EQ(divisions_failed, 3);
            for (int id = 1; id <= 50; ++id) {
                EXPECT_EQ(ok_per_id[id], 1) << "id " << id;
                EXPECT_EQ(dup_per_id[id], id % 10 == 0 ? 1 : 0) << "id " << id;
            }
            auto rows = co_await admin.query<int>("SELECT id FROM " + table + " ORDER BY id");
            std::vector<int> expected;
            for (int id = 1; id <= 50; ++id)
                expected.push_back(id);
            EXPECT_EQ(rows, expected);
            auto s = p.stats();
            EXPECT_GT(s.statements_multiplexed, 0u);
            EXPECT_EQ(s.connections_opened, 1u);
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(mux, a_decoding_failure_fails_alone)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            int done = 0, correct = 0, mismatched = 0;
            std::vector<std::string> unexpected;
            for (int i = 0; i < 40; ++i) {
                bool bad = i % 10 == 5;
                asio::co_spawn(
                    ex,
                    [&, i, bad]() -> awaitable<void> {
                        try {
                            if (bad) {
                                // A text column read as int (every column reads as std::string,
                                // so the mismatch goes this way round).
                                auto v =
                                    co_await p.query_one<int>("SELECT $1::text", std::to_string(i));
                                unexpected.push_back("text decoded as int: " + std::to_string(v));
                            } else if (co_await p.query_one<int>("SELECT $1::int4", i) == i) {
                                ++correct;
                            } else {
                                unexpected.push_back("wrong value for " + std::to_string(i));
                            }
                        } catch (const pgco::error& e) {
                            if (bad && e.code() == pgco::errc::type_mismatch)
                                ++mismatched;
                            else
                                unexpected.push_back(std::to_string(i) + ": " + e.what());
                        }
                        ++done;
                    },
                    asio::detached);
            }
            EXPECT_TRUE(co_await eventually([&] { return done == 40; }, 8s));
            EXPECT_EQ(correct, 36);
            EXPECT_EQ(mismatched, 4);
            for (const auto& u : unexpected)
                ADD_FAILURE() << u;
            EXPECT_GT(p.stats().statements_multiplexed, 0u);
            EXPECT_EQ(co_await p.query_one<int>("SELECT $1::int4", 7), 7);
            co_await p.close();
        },
        10s);
}

// Small results are decoded as they arrive (batch_entry::early_rows), larger ones when the
// batch's Sync confirms them; callers of both kinds, and of row counts on either side of the
// limit, share batches and each gets exactly its own rows.
TEST(mux, small_and_large_results_in_one_batch_each_reach_their_caller)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            const int sizes[] = {0, 1, 63, 64, 65, 300};
            constexpr int callers = 120;
            int done = 0, correct = 0;
            std::vector<std::string> unexpected;
            for (int i = 0; i < callers; ++i) {
                int n = sizes[i % 6] + (i % 12 == 11 ? 1000 : 0);
                asio::co_spawn(
                    ex,
                    [&, i, n]() -> awaitable<void> {
                        try {
                            if (i % 2 == 0) {
                                auto rows = co_await p.query<int>(
                                    "SELECT g + $2::int FROM generate_series(1, $1::int) g", n, i);
                                bool ok = static_cast<int>(rows.size()) == n;
                                for (int k = 0; ok && k < n; ++k)
                                    ok = rows[static_cast<std::size_t>(k)] == k + 1 + i;
                                if (ok)
                                    ++correct;
                                else
                                    unexpected.push_back("caller " + std::to_string(i) + ": " +
                                                         std::to_string(rows.size()) +
                                                         " rows, expected " + std::to_string(n));
                            } else {
                                auto affected = co_await p.execute(
                                    "SELECT g FROM generate_series(1, $1::int) g", n);
                                if (affected == static_cast<std::uint64_t>(n))
                                    ++correct;
                                else
                                    unexpected.push_back("caller " + std::to_string(i) + ": " +
                                                         std::to_string(affected) +
                                                         " affected, expected " +
                                                         std::to_string(n));
                            }
                        } catch (const std::exception& e) {
                            unexpected.push_back("caller " + std::to_string(i) + ": " + e.what());
                        }
                        ++done;
                    },
                    asio::detached);
            }
            EXPECT_TRUE(co_await eventually([&] { return done == callers; }, 8s));
            EXPECT_EQ(correct, callers);
            for (const auto& u : unexpected)
                ADD_FAILURE() << u;
            auto s = p.stats();
            EXPECT_GT(s.statements_multiplexed, 0u);
            EXPECT_LT(s.pipeline_batches, static_cast<std::uint64_t>(callers));
            co_await p.close();
        },
        10s);
}

// The same text with parameters of other types is another statement: multiplexed callers
// alternating between them (on recycled queue items) each run their own.
TEST(mux, same_text_with_other_parameter_types_stays_apart)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            // int4 || text, or (unknown, resolved as text) || text: prepared with the other
            // parameter type, each would fail (22P02) or read the binary int4 as text.
            const std::string sql = "SELECT ($1 || '')::text";
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            constexpr int callers = 100;
            int done = 0, correct = 0;
            std::vector<std::string> unexpected;
            for (int i = 0; i < callers; ++i)
                asio::co_spawn(
                    ex,
                    [&, i]() -> awaitable<void> {
                        try {
                            for (int round = 0; round < 3; ++round) {
                                bool text = (i + round) % 2 == 0;
                                std::string want = (text ? "t" : "") + std::to_string(i);
                                // Not `text ? co_await ... : co_await ...`: GCC 12
                                // miscompiles temporaries in a conditional around co_await.
                                std::string got;
                                if (text)
                                    got = co_await p.query_one<std::string>(sql, want);
                                else
                                    got = co_await p.query_one<std::string>(sql, i);
                                if (got != want)
                                    unexpected.push_back("caller " + std::to_string(i) + ": " +
                                                         got + ", expected " + want);
                                else
                                    ++correct;
                            }
                        } catch (const std::exception& e) {
                            unexpected.push_back("caller " + std::to_string(i) + ": " + e.what());
                        }
                        ++done;
                    },
                    asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return done == callers; }, 8s));
            EXPECT_EQ(correct, 3 * callers);
            for (const auto& u : unexpected)
                ADD_FAILURE() << u;
            EXPECT_GT(p.stats().statements_multiplexed, 0u);
            co_await p.close();
        },
        10s);
}

TEST(mux, acquire_and_transactions_are_not_starved_by_multiplexed_load)
{
    const auto table = cm_unique("mux_starve");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int)");
            pgco::pool p(
                ex, pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=2")));
            bool stop = false;
            int workers_done = 0, wrong = 0, ops = 0;
            std::vector<std::string> failures;
            constexpr int workers = 16;
            for (int w = 0; w < workers; ++w)
                asio::co_spawn(
                    ex,
                    [&, w]() -> awaitable<void> {
                        for (int n = 0; !stop && n < 100000; ++n) {
                            try {
                                int want = w * 100000 + n;
                                if (co_await p.query_one<int>("SELECT $1::int4", want) != want)
                                    ++wrong;
                                ++ops;
                            } catch (const std::exception& e) {
                                failures.push_back(e.what());
                                break;
                            }
                        }
                        ++workers_done;
                    },
                    asio::detached);
            co_await sleep_for(50ms);

            const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";
            const std::string count = "SELECT count(*) FROM " + table;
            for (int k = 1; k <= 5; ++k) {
                auto start = clock_type::now();
                {
                    auto c = co_await p.acquire();
                    EXPECT_LT(ms_since(start), 2000);
                    EXPECT_EQ(co_await c->query_one<int>("SELECT $1::int4 + 1", k), k + 1);
                }
                start = clock_type::now();
                auto body = [&insert, &count, k](pgco::transaction& tx) -> awaitable<std::int64_t> {
                    co_await tx.execute(insert, k);
                    co_return co_await tx.query_one<std::int64_t>(count);
                };
                auto seen = co_await p.transaction(body);
                EXPECT_EQ(seen, k);
                EXPECT_LT(ms_since(start), 2000);
                co_await sleep_for(20ms);
            }
            stop = true;
            EXPECT_TRUE(co_await eventually([&] { return workers_done == workers; }, 5s));
            EXPECT_EQ(wrong, 0);
            for (const auto& f : failures)
                ADD_FAILURE() << "worker failed: " << f;
            EXPECT_GT(ops, 0);
            EXPECT_GT(p.stats().statements_multiplexed, 0u);
            EXPECT_EQ(p.stats().acquire_timeouts, 0u);
            EXPECT_EQ(co_await admin.query_one<std::int64_t>(count), 5);
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(mux, pool_timeout_while_queued_fails_and_the_statement_never_runs)
{
    const auto table = cm_unique("mux_timeout");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int)");
            pgco::pool p(
                ex, pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=0.3")));
            const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";
            auto held = co_await p.acquire();

            auto start = clock_type::now();
            auto queued = [&]() -> awaitable<void> { co_await p.execute(insert, 1); };
            auto e = co_await expect_error(queued);
            auto elapsed = ms_since(start);
            EXPECT_EQ(e.code(), pgco::errc::pool_timeout) << e.what();
            EXPECT_NE(std::string(e.what()).find("P2024"), std::string::npos) << e.what();
            EXPECT_GE(elapsed, 250);
            EXPECT_LE(elapsed, 1000);

            // A statement queued after the timeout (reusing what the pool keeps for queued
            // statements) runs once when the connection comes back, and the one that timed
            // out never does.
            std::optional<std::uint64_t> second;
            std::string second_error;
            asio::co_spawn(
                ex,
                [&]() -> awaitable<void> {
                    try {
                        second = co_await p.execute(insert, 2);
                    } catch (const std::exception& e) {
                        second_error = e.what();
                    }
                },
                asio::detached);
            co_await sleep_for(100ms); // well within pool_timeout
            EXPECT_FALSE(second);
            held.release();
            EXPECT_TRUE(co_await eventually([&] { return second.has_value(); }, 2s))
                << second_error;
            EXPECT_EQ(second.value_or(0), 1u);
            co_await sleep_for(500ms);
            const std::vector<int> just_two{2};
            auto ids = co_await admin.query<int>("SELECT id FROM " + table);
            EXPECT_EQ(ids, just_two);
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(mux, too_many_queued_statements_fail_at_once_and_the_queued_ones_still_run)
{
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(
                                 url_with("connection_limit=1&max_waiters=2&pool_timeout=5")));
            auto held = co_await p.acquire(); // the statements below queue for it
            std::vector<int> got;
            std::string failed;
            for (int i = 1; i <= 2; ++i)
                asio::co_spawn(
                    ex,
                    [&, i]() -> awaitable<void> {
                        try {
                            got.push_back(co_await p.query_one<int>("SELECT $1::int", i));
                        } catch (const std::exception& e) {
                            failed = e.what();
                        }
                    },
                    asio::detached);
            co_await sleep_for(100ms);
            EXPECT_TRUE(got.empty());

            auto start = clock_type::now();
            auto third = [&]() -> awaitable<void> { co_await p.query_one<int>("SELECT 3"); };
            auto e = co_await expect_error(third);
            EXPECT_EQ(e.code(), pgco::errc::pool_exhausted) << e.what();
            EXPECT_NE(std::string(e.what()).find("max_waiters=2"), std::string::npos) << e.what();
            EXPECT_LT(ms_since(start), 100);

            held.release();
            EXPECT_TRUE(co_await eventually([&] { return got.size() == 2; }, 2s)) << failed;
            std::sort(got.begin(), got.end());
            EXPECT_EQ(got, (std::vector<int>{1, 2}));
            co_await p.close();
        },
        10s);
}

TEST(mux, cancelled_while_queued_never_runs)
{
    using namespace asio::experimental::awaitable_operators;
    const auto table = cm_unique("mux_cancel");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int)");
            pgco::pool p(
                ex, pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=5")));
            const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";
            auto held = co_await p.acquire();

            std::error_code code;
            std::string what;
            // Named, not made inside a co_await: GCC 12 destroys such lambdas twice.
            auto run_insert = [&]() -> awaitable<void> { co_await p.execute(insert, 1); };
            auto insert_one = [&]() -> awaitable<void> {
                co_await noting_error(code, what, run_insert);
            };
            asio::steady_timer timer(ex, 100ms);
            auto start = clock_type::now();
            auto op = insert_one();
            auto tick = timer.async_wait(asio::use_awaitable);
            auto winner = co_await (std::move(op) || std::move(tick));
            EXPECT_EQ(winner.index(), 1u);
            EXPECT_LT(ms_since(start), 1000);
            EXPECT_EQ(code, pgco::errc::cancelled) << what;

            held.release();
            co_await sleep_for(500ms);
            EXPECT_EQ(co_await admin.query_one<std::int64_t>("SELECT count(*) FROM " + table), 0)
                << "the cancelled statement ran";
            EXPECT_EQ(co_await p.execute(insert, 2), 1u);
            const std::vector<int> just_two{2};
            auto ids = co_await admin.query<int>("SELECT id FROM " + table);
            EXPECT_EQ(ids, just_two);
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(mux, backends_killed_under_multiplexed_load_give_no_wrong_values)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto app = cm_unique("mux_kill");
            pgco::pool p(ex, pgco::pool_options::from_url(url_with(
                                 "connection_limit=2&pool_timeout=5&retry_backoff=0,0.05,0.1"
                                 "&application_name=" +
                                 app)));
            auto admin = co_await connected();
            bool stop = false;
            int workers_done = 0, wrong = 0, ok = 0;
            std::vector<std::string> bad_failures;
            int connection_failures = 0;
            constexpr int workers = 64;
            for (int w = 0; w < workers; ++w)
                asio::co_spawn(
                    ex,
                    [&, w]() -> awaitable<void> {
                        for (int n = 0; !stop && n < 100000; ++n) {
                            int want = w * 100000 + n;
                            try {
                                int got = co_await p.query_one<int>(pgco::idempotent,
                                                                    "SELECT $1::int4", want);
                                if (got != want)
                                    ++wrong;
                                else
                                    ++ok;
                            } catch (const pgco::error& e) {
                                if (pgco::is_connection_error(e))
                                    ++connection_failures;
                                else
                                    bad_failures.push_back(e.what());
                            } catch (const std::exception& e) {
                                bad_failures.push_back(e.what());
                            }
                        }
                        ++workers_done;
                    },
                    asio::detached);

            auto start = clock_type::now();
            std::int64_t killed = 0;
            for (int round = 0; round < 4; ++round) {
                co_await sleep_for(300ms);
                // The filter first, in a subquery: only the pool's own backends are terminated.
                killed += co_await admin.query_one<std::int64_t>(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS t FROM "
                    "pg_stat_activity WHERE application_name = $1) AS s WHERE s.t",
                    app);
            }
            const std::chrono::milliseconds rest(std::max(0LL, 1500 - ms_since(start)));
            co_await sleep_for(rest);
            stop = true;
            EXPECT_TRUE(co_await eventually([&] { return workers_done == workers; }, 6s));
            EXPECT_GT(killed, 0) << "no backend of the pool was terminated";
            EXPECT_EQ(wrong, 0);
            EXPECT_GT(ok, 0);
            for (const auto& f : bad_failures)
                ADD_FAILURE() << "not a connection error: " << f;
            auto s = p.stats();
            EXPECT_GT(s.statements_multiplexed, 0u);
            EXPECT_GE(s.connections_opened, 2u);
            ::testing::Test::RecordProperty("killed", static_cast<int>(killed));
            ::testing::Test::RecordProperty("connection_failures", connection_failures);
            ::testing::Test::RecordProperty("ok", ok);
            // The pool recovers.
            EXPECT_EQ(co_await p.query_one<int>("SELECT $1::int4", 123), 123);
            EXPECT_EQ(co_await p.query_one<int>("SELECT 456"), 456);
            co_await p.close();
        },
        10s);
}

TEST(mux, multiplex_off_never_shares)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(
                ex, pgco::pool_options::from_url(url_with("connection_limit=1&multiplex=false")));
            constexpr int callers = 50;
            int done = 0, correct = 0;
            for (int i = 0; i < callers; ++i)
                asio::co_spawn(
                    ex,
                    [&, i]() -> awaitable<void> {
                        try {
                            if (co_await p.query_one<int>("SELECT $1::int4", i) == i)
                                ++correct;
                        } catch (const std::exception& e) {
                            ADD_FAILURE() << "caller " << i << ": " << e.what();
                        }
                        ++done;
                    },
                    asio::detached);
            EXPECT_TRUE(co_await eventually([&] { return done == callers; }, 8s));
            EXPECT_EQ(correct, callers);
            auto s = p.stats();
            EXPECT_EQ(s.statements_multiplexed, 0u);
            EXPECT_EQ(s.pipeline_batches, 0u);
            EXPECT_EQ(s.acquired, static_cast<std::uint64_t>(callers));
            co_await p.close();
        },
        10s);
}

TEST(mux, cancelled_statement_on_a_free_connection_reports_cancelled)
{
    using namespace asio::experimental::awaitable_operators;
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            // A permit is free: the statement takes a connection of its own (no queueing).
            std::error_code code;
            std::string what;
            auto sleep = [&]() -> awaitable<void> {
                co_await p.query_one<int>("SELECT 1 FROM pg_sleep(5)");
            };
            auto sleeper = [&]() -> awaitable<void> { co_await noting_error(code, what, sleep); };
            asio::steady_timer timer(ex, 100ms);
            auto start = clock_type::now();
            auto op = sleeper();
            auto tick = timer.async_wait(asio::use_awaitable);
            auto winner = co_await (std::move(op) || std::move(tick));
            EXPECT_EQ(winner.index(), 1u);
            EXPECT_LT(ms_since(start), 2000);
            EXPECT_EQ(code, pgco::errc::cancelled) << what;
            EXPECT_EQ(co_await p.query_one<int>("SELECT $1::int4", 5), 5);
            co_await p.close();
        },
        10s);
}

TEST(mux, statement_deallocated_behind_pgcos_back_is_prepared_again_in_a_batch)
{
    run(
        []() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=1")));
            const std::string sql = "SELECT $1::int4 * 7";
            EXPECT_EQ(co_await p.query_one<int>(sql, 1), 7);
            EXPECT_EQ(co_await p.query_one<int>(sql, 2), 14);
            auto held = co_await p.acquire();
            auto name = co_await held->query_one<std::string>(
                "SELECT name FROM pg_prepared_statements WHERE statement = $1", sql);
            co_await held->exec("DEALLOCATE " + name);

            // Queued behind the held connection, then sent together with the stale name.
            constexpr int callers = 20;
            int done = 0, correct = 0;
            std::vector<std::string> failures;
            for (int i = 0; i < callers; ++i)
                asio::co_spawn(
                    ex,
                    [&, i]() -> awaitable<void> {
                        try {
                            if (co_await p.query_one<int>(sql, i) == 7 * i)
                                ++correct;
                        } catch (const std::exception& e) {
                            failures.push_back(e.what());
                        }
                        ++done;
                    },
                    asio::detached);
            co_await sleep_for(20ms);
            held.release();
            EXPECT_TRUE(co_await eventually([&] { return done == callers; }, 5s));
            EXPECT_EQ(correct, callers);
            for (const auto& f : failures)
                ADD_FAILURE() << f;
            EXPECT_GT(p.stats().statements_multiplexed, 0u);
            EXPECT_EQ(p.stats().connections_opened, 1u);
            co_await p.close();
        },
        10s);
}

TEST(batch, sql_text_with_a_nul_byte_is_refused_everywhere_and_nothing_runs)
{
    // libpq would run only the text before the NUL: here, an UPDATE of every row.
    const auto table = cm_unique("nul_sql");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " AS SELECT g AS id, 0 AS x FROM " +
                                "generate_series(1, 3) g");
            const std::string text = "UPDATE " + table + " SET x = 1";
            const std::string bad = text + std::string(1, '\0') + " WHERE id = 2";
            auto check = [&](const pgco::error& e) {
                EXPECT_EQ(e.code(), pgco::errc::invalid_parameter) << e.what();
                EXPECT_NE(
                    std::string(e.what()).find("NUL byte at offset " + std::to_string(text.size())),
                    std::string::npos)
                    << e.what();
                EXPECT_FALSE(e.request_sent());
            };

            check(co_await expect_error([&]() -> awaitable<void> { co_await admin.execute(bad); }));

            pgco::pool p(
                ex, pgco::pool_options::from_url(url_with("connection_limit=1&pool_timeout=5")));
            check(co_await expect_error([&]() -> awaitable<void> { co_await p.execute(bad); }));
            {
                auto held = co_await p.acquire(); // the next one would be multiplexed
                auto start = clock_type::now();
                check(co_await expect_error([&]() -> awaitable<void> { co_await p.execute(bad); }));
                EXPECT_LT(ms_since(start), 1000);
            }
            pgco::batch b;
            try {
                b.add("SELECT 1");
                b.add(bad);
                ADD_FAILURE() << "batch::add accepted a NUL byte";
            } catch (const pgco::error& e) {
                check(e);
            }
            EXPECT_EQ(b.size(), 1u);

            EXPECT_EQ(co_await admin.query_one<std::int64_t>("SELECT count(*) FROM " + table +
                                                             " WHERE x <> 0"),
                      0);
            EXPECT_EQ(co_await p.execute(text + " WHERE id = $1", 2), 1u);
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        20s);
    run([&]() -> awaitable<void> { co_await drop_table(table); }, 10s);
}

TEST(batch, statements_run_together_and_see_each_other)
{
    const auto table = cm_unique("batch_ok");
    run(
        [&]() -> awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int PRIMARY KEY, v text)");
            pgco::pool p(ex, pgco::pool_options::from_url(url_with("connection_limit=2")));
            const std::string insert = "INSERT INTO " + table + " (id, v) VALUES ($1, $2)";
            pgco::batch b;
            b.add(insert, 1, std::string("one"))
                .add(insert, 2, std::string("two"))
                .add("SELECT count(*)::int FROM " + table);
            auto results = co_await p.pipeline(b);
            EXPECT_EQ(results.size(), 3u);
            EXPECT_EQ(results[0].rows_affected(), 1u);
            EXPECT_EQ(results[2].get<int>(0, 0), 2); // the batch's own inserts are visible
            // Again: the statements are cached now, the values still right.
            pgco::batch again;
            again.add(insert, 3, std::string("three"))
                .add("SELECT v FROM " + table + " WHERE id = $1", 3);
            auto second = co_await p.pipeline(again);
            EXPECT_EQ(second[1].get<std::string>(0, 0), "three");
            pgco::batch empty;
            EXPECT_TRUE((co_await p.pipeline(empty)).empty());
            co_await p.close();
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
}

TEST(batch, is_all_or_nothing_and_names_the_failing_statement)
{
    const auto table = cm_unique("batch_fail");
    run(
        [&]() -> awaitable<void> {
            auto admin = co_await connected();
            co_await admin.exec("CREATE TABLE " + table + " (id int PRIMARY KEY)");
            auto c = co_await connected();
            const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";
            pgco::batch b;
            b.add(insert, 1).add(insert, 1).add(insert, 2);
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await c.pipeline(b); });
            EXPECT_EQ(e.code(), pgco::errc::server_error);
            EXPECT_EQ(e.sqlstate(), "23505");
            EXPECT_NE(std::string(e.what()).find("statement 2 of the batch"), std::string::npos)
                << e.what();
            EXPECT_FALSE(pgco::maybe_applied(e));
            EXPECT_EQ(co_await admin.query_one<std::int64_t>("SELECT count(*) FROM " + table), 0);
            // The connection is fine afterwards, outside any transaction.
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            pgco::batch ok;
            ok.add(insert, 1).add(insert, 2);
            EXPECT_EQ((co_await c.pipeline(ok)).size(), 2u);
            EXPECT_EQ(co_await admin.query_one<std::int64_t>("SELECT count(*) FROM " + table), 2);
            co_await admin.exec("DROP TABLE " + table);
        },
        10s);
}
