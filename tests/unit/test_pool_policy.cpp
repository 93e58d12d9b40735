// The pool's time-dependent decisions, checked with made-up time points: a 30-minute lifetime
// or a 2-second backoff costs microseconds here.

#include <pgco/detail/pool_policy.hpp>

#include <gtest/gtest.h>

using namespace std::chrono_literals;
using pgco::detail::conn_meta;
using pgco::detail::decide_idle;
using pgco::detail::idle_action;
using pgco::detail::pool_clock;

namespace {

const pool_clock::time_point t0 = pool_clock::time_point{} + 1000h;

conn_meta fresh(pool_clock::time_point at)
{
    conn_meta m;
    m.created = m.last_used = m.last_checked = at;
    return m;
}

pgco::pool_options options()
{
    pgco::pool_options o;
    o.health_check_interval = 30s;
    o.max_lifetime = 30min;
    o.idle_timeout = 10min;
    return o;
}

} // namespace

TEST(pool_policy, lifetime_deadline_has_bounded_jitter)
{
    using pgco::detail::retire_deadline;
    EXPECT_EQ(retire_deadline(t0, 30min, 0.0), t0 + 30min);
    EXPECT_EQ(retire_deadline(t0, 30min, 1.0), t0 + 30min - 45s); // 2.5 % earlier at most
    auto mid = retire_deadline(t0, 30min, 0.5);
    EXPECT_GT(mid, t0 + 30min - 45s);
    EXPECT_LT(mid, t0 + 30min);
    EXPECT_EQ(retire_deadline(t0, 0ms, 0.5), pool_clock::time_point::max()); // 0: never
}

TEST(pool_policy, idle_connection_is_pinged_after_the_interval)
{
    auto o = options();
    auto m = fresh(t0);
    EXPECT_EQ(decide_idle(m, t0 + 29s, o, true, false), idle_action::keep);
    EXPECT_EQ(decide_idle(m, t0 + 30s, o, true, false), idle_action::ping);
    // A recent use or a recent successful ping both count as a sign of life.
    m.last_checked = t0 + 20s;
    EXPECT_EQ(decide_idle(m, t0 + 40s, o, true, false), idle_action::keep);
    EXPECT_EQ(decide_idle(m, t0 + 50s, o, true, false), idle_action::ping);
    // Pings pause while callers wait for connections.
    EXPECT_EQ(decide_idle(m, t0 + 50s, o, true, true), idle_action::keep);
    // Interval 0 turns pinging off.
    o.health_check_interval = 0ms;
    EXPECT_EQ(decide_idle(m, t0 + 9min, o, true, false), idle_action::keep);
}

TEST(pool_policy, retirement_by_lifetime_and_idle_timeout)
{
    auto o = options();
    auto m = fresh(t0);
    m.retire_at = pgco::detail::retire_deadline(t0, o.max_lifetime, 0.0);
    m.last_checked = t0 + 29min; // pinged recently: lifetime still wins
    m.last_used = t0 + 25min;
    EXPECT_EQ(decide_idle(m, t0 + 30min, o, true, false), idle_action::retire_lifetime);

    auto idle = fresh(t0);
    idle.last_checked = t0 + 10min;
    EXPECT_EQ(decide_idle(idle, t0 + 10min, o, true, false), idle_action::retire_idle);
    // Not below min_idle: then it stays (and is pinged instead).
    EXPECT_EQ(decide_idle(idle, t0 + 10min, o, false, false), idle_action::keep);
    o.idle_timeout = 0ms;
    EXPECT_EQ(decide_idle(idle, t0 + 10min, o, true, false), idle_action::keep);
}

TEST(pool_policy, connect_backoff_doubles_up_to_a_second)
{
    using pgco::detail::connect_backoff;
    EXPECT_EQ(connect_backoff(0), 50ms);
    EXPECT_EQ(connect_backoff(1), 100ms);
    EXPECT_EQ(connect_backoff(2), 200ms);
    EXPECT_EQ(connect_backoff(4), 800ms);
    EXPECT_EQ(connect_backoff(5), 1s);
    EXPECT_EQ(connect_backoff(40), 1s);
}

TEST(pool_policy, percentiles_by_nearest_rank)
{
    using pgco::detail::percentile;
    EXPECT_EQ(percentile({}, 0.5), 0us);
    std::vector<std::chrono::microseconds> v;
    for (int i = 100; i >= 1; --i)
        v.emplace_back(i);
    EXPECT_EQ(percentile(v, 0.5), 51us);
    EXPECT_EQ(percentile(v, 0.99), 99us);
    EXPECT_EQ(percentile(v, 1.0), 100us);
    EXPECT_EQ(percentile({7us}, 0.99), 7us);
}

TEST(pool_policy, timeout_message_says_which_case)
{
    auto o = options();
    o.connection_limit = 2;
    o.pool_timeout = 500ms;
    auto busy = pgco::detail::pool_timeout_message(o, 2, 2, 3, "");
    EXPECT_NE(busy.find("P2024"), std::string::npos);
    EXPECT_NE(busy.find("busy"), std::string::npos);
    EXPECT_NE(busy.find("2 in use"), std::string::npos);
    EXPECT_NE(busy.find("3 waiting"), std::string::npos);
    auto down = pgco::detail::pool_timeout_message(o, 0, 0, 0, "P1001: connection refused");
    EXPECT_NE(down.find("could not be reached"), std::string::npos);
    EXPECT_NE(down.find("refused"), std::string::npos);
}
