#pragma once

// The pool's decisions that depend on time, as pure functions of "now": tested with made-up
// time points, so a 30-minute lifetime or a 2-second backoff is checked in microseconds.

#include <pgco/config.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace pgco::detail {

using pool_clock = std::chrono::steady_clock;

/// What the pool remembers about one open connection.
struct conn_meta
{
    pool_clock::time_point created{};
    pool_clock::time_point retire_at = pool_clock::time_point::max();
    pool_clock::time_point last_used{};    // returned to the pool
    pool_clock::time_point last_checked{}; // last successful ping or use
    std::uint64_t epoch = 0;               // `reconnect()` generation it was opened in
};

/// When a connection opened at `created` retires: `max_lifetime` shortened by up to 2.5 %
/// (`jitter` in [0, 1)), so connections opened together do not all close together.
pool_clock::time_point retire_deadline(pool_clock::time_point created,
                                       std::chrono::milliseconds max_lifetime, double jitter);

/// What to do with an idle connection during maintenance.
enum class idle_action
{
    keep,
    retire_lifetime, ///< older than its retire deadline
    retire_idle,     ///< idle longer than `idle_timeout`, and the pool has more than `min_idle`
    ping,            ///< not used or checked within `health_check_interval`
};

/// Decides for one idle connection. `above_min_idle` says whether closing it keeps at least
/// `min_idle` open; `callers_waiting` pauses health checks while callers wait.
idle_action decide_idle(const conn_meta& m, pool_clock::time_point now, const pool_options& o,
                        bool above_min_idle, bool callers_waiting);

/// Pause before the next connect attempt inside `acquire`: 50 ms, doubling, at most 1 s.
std::chrono::milliseconds connect_backoff(unsigned failed_attempts);

/// The `p`-quantile (0..1) of `samples` (nearest rank); zero when there are none.
std::chrono::microseconds percentile(std::vector<std::chrono::microseconds> samples, double p);

/// The P2024 message: which limit was hit and why.
std::string pool_timeout_message(const pool_options& o, std::size_t open, std::size_t in_use,
                                 std::size_t waiting, const std::string& last_connect_error);

} // namespace pgco::detail
