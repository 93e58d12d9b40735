// The retry decision table (DESIGN.md) as code, without a server.

#include <pgco/config.hpp>
#include <pgco/retry.hpp>

#include <gtest/gtest.h>

using namespace std::chrono_literals;
using pgco::errc;
using pgco::retry_decision;

namespace {

pgco::error failure(errc code, std::string sqlstate, bool sent)
{
    return pgco::error(code, "test failure", std::move(sqlstate), "", "", "", sent);
}

} // namespace

TEST(retry, before_the_request_was_sent_always_retries)
{
    EXPECT_EQ(classify(failure(errc::cannot_connect, "", false)), retry_decision::retry);
    EXPECT_EQ(classify(failure(errc::connect_timeout, "", false)), retry_decision::retry);
    EXPECT_EQ(classify(failure(errc::cannot_connect, "57P03", false)), retry_decision::retry);
    EXPECT_EQ(classify(failure(errc::cannot_connect, "53300", false)), retry_decision::retry);
    // a pooled connection found dead before use
    EXPECT_EQ(classify(failure(errc::connection_lost, "", false)), retry_decision::retry);
    EXPECT_FALSE(pgco::maybe_applied(failure(errc::connection_lost, "", false)));
}

TEST(retry, server_reported_abort_retries)
{
    for (const char* state : {"57P01", "57P02"}) {
        auto e = failure(errc::connection_lost, state, true);
        EXPECT_EQ(classify(e), retry_decision::retry) << state;
        EXPECT_FALSE(pgco::maybe_applied(e)) << state;
    }
    for (const char* state : {"40001", "40P01"}) {
        auto e = failure(errc::server_error, state, true);
        EXPECT_EQ(classify(e), retry_decision::retry) << state;
        EXPECT_FALSE(pgco::maybe_applied(e));
    }
}

TEST(retry, lost_after_sending_only_if_idempotent)
{
    auto e = failure(errc::connection_lost, "", true);
    EXPECT_EQ(classify(e), retry_decision::retry_if_idempotent);
    EXPECT_TRUE(pgco::maybe_applied(e));
    // "Complete" arrived, then the session ended: the commit may have happened.
    auto late = failure(errc::connection_lost, "57P01", true);
    late.set_maybe_applied(true);
    EXPECT_EQ(classify(late), retry_decision::retry_if_idempotent);
}

TEST(retry, sql_auth_constraint_and_client_errors_never_retry)
{
    for (const char* state : {"42P01", "42601", "28P01", "23505", "22P02", "57014"})
        EXPECT_EQ(classify(failure(errc::server_error, state, true)), retry_decision::fail)
            << state;
    EXPECT_EQ(classify(failure(errc::authentication_failed, "28P01", false)), retry_decision::fail);
    for (auto code : {errc::cancelled, errc::pool_closed, errc::pool_timeout, errc::pool_exhausted,
                      errc::commit_outcome_unknown, errc::transaction_rolled_back,
                      errc::type_mismatch, errc::invalid_parameter, errc::connection_closed})
        EXPECT_EQ(classify(failure(code, "", true)), retry_decision::fail)
            << make_error_code(code).message();
    EXPECT_FALSE(pgco::maybe_applied(failure(errc::server_error, "23505", true)));
}

TEST(retry, default_schedule_is_now_then_2s_then_4s)
{
    pgco::retry_policy p;
    EXPECT_EQ(p.attempts, 3u);
    EXPECT_EQ(p.pause_before(1), 0ms);
    EXPECT_EQ(p.pause_before(2), 2000ms);
    EXPECT_EQ(p.pause_before(3), 4000ms);
    EXPECT_EQ(p.pause_before(7), 4000ms); // the last pause repeats
}

TEST(retry, policy_from_the_url)
{
    auto o = pgco::pool_options::from_url("postgresql://h/db?retry_attempts=5&retry_backoff=0.1,"
                                          "0.5&retry_jitter=0.2&retry_deadline=30&retry_all=true");
    EXPECT_EQ(o.retry.attempts, 5u);
    EXPECT_EQ(o.retry.backoff, (std::vector<std::chrono::milliseconds>{100ms, 500ms}));
    EXPECT_DOUBLE_EQ(o.retry.jitter, 0.2);
    EXPECT_EQ(o.retry.deadline, 30s);
    EXPECT_TRUE(o.retry.retry_all);
    EXPECT_EQ(o.conninfo, "postgresql://h/db");
    for (const char* bad : {"retry_attempts=-1", "retry_backoff=", "retry_backoff=1,,2",
                            "retry_jitter=2", "retry_all=maybe"}) {
        try {
            pgco::pool_options::from_url(std::string("postgresql://h/db?") + bad);
            ADD_FAILURE() << bad << " was accepted";
        } catch (const pgco::error& e) {
            EXPECT_EQ(e.code(), errc::invalid_configuration);
            std::string key(bad, std::string_view(bad).find('='));
            EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
        }
    }
}
