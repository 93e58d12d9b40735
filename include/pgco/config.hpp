#pragma once

#include <pgco/retry.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace pgco {

// clang-format off
/// Settings for a pool and the connections it opens.
///
/// Read them from a `postgres://` / `postgresql://` URI or a libpq `key=value` string with
/// `from_url`, or from an environment variable with `from_env`. pgco's own parameters are
/// taken out of the string before libpq sees the rest:
///
/// | parameter          | field              | default | meaning                              |
/// |--------------------|--------------------|---------|--------------------------------------|
/// | `connection_limit` | `connection_limit` | 10      | most connections the pool opens      |
/// | `pool_timeout`     | `pool_timeout`     | 20 s    | longest wait for a pooled connection |
/// | `connect_timeout`  | `connect_timeout`  | 10 s    | longest time to open one connection  |
/// | `max_waiters`      | `max_waiters`      | 10000   | callers that may wait in `acquire`   |
/// | `max_connecting`   | `max_connecting`   | 2       | connections being opened at once     |
/// | `min_idle`         | `min_idle`         | 0       | connections kept open while idle     |
/// | `health_check_interval` | `health_check_interval` | 30 s | ping idle connections this often |
/// | `health_check_timeout`  | `health_check_timeout`  | 5 s  | longest wait for a ping          |
/// | `max_lifetime`     | `max_lifetime`     | 30 min  | retire connections this old (±2.5 %) |
/// | `idle_timeout`     | `idle_timeout`     | 10 min  | retire connections idle this long    |
/// | `query_timeout`    | `query_timeout`    | 0       | longest statement; 0: no limit       |
/// | `retry_attempts`   | `retry.attempts`   | 3       | attempts after a failed first try    |
/// | `retry_backoff`    | `retry.backoff`    | 0,2,4   | pauses before the attempts (seconds) |
/// | `retry_jitter`     | `retry.jitter`     | 0       | pauses lengthened by up to this share |
/// | `retry_deadline`   | `retry.deadline`   | 0       | give up after this long; 0: never    |
/// | `retry_all`        | `retry.retry_all`  | false   | treat every statement as idempotent  |
/// | `statement_cache_size` | `statement_cache_size` | 256 | prepared statements per connection; 0: off |
/// | `multiplex`        | `multiplex`        | true    | share busy connections by pipelining |
/// | `pipeline_depth`   | `pipeline_depth`   | 256     | most statements in one shared batch  |
/// | `pgbouncer`        | `pgbouncer`        | false   | behind PgBouncer (transaction mode): no cache |
///
/// Durations are seconds and may have a fraction (`0.5`); `0` means no limit (no health
/// checks, no retirement), as in libpq.
// clang-format on
struct pool_options
{
    /// The connection string handed to libpq, without pgco's own parameters.
    std::string conninfo;
    /// The most connections the pool keeps open at once (at least 1).
    std::size_t connection_limit = 10;
    /// How long `acquire` may wait for a connection, connecting included; zero waits forever.
    std::chrono::milliseconds pool_timeout{std::chrono::seconds(20)};
    /// How long opening one connection may take: the name lookup, and each host of a
    /// multi-host URL separately (as in libpq), so that a host that never answers does not keep
    /// the next one from being tried. Zero waits forever.
    std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
    /// How many callers may wait in `acquire` at once; more fail at once with `pool_exhausted`.
    std::size_t max_waiters = 10000;
    /// How many connections may be being opened at once (at least 1). After the server drops
    /// every connection, reconnecting them all at once would make the server fork and hash
    /// passwords for all of them together, starving everything else on its CPU (and the
    /// client's); a few at a time restore the pool nearly as fast, since the first connection
    /// back already serves every caller by multiplexing. A connect waiting for its turn counts
    /// against `pool_timeout`.
    std::size_t max_connecting = 2;
    /// How many connections the pool keeps open (and opens ahead of demand) while idle.
    std::size_t min_idle = 0;
    /// How often idle connections are pinged with `SELECT 1`; zero turns pinging off.
    std::chrono::milliseconds health_check_interval{std::chrono::seconds(30)};
    /// How long a ping may take before the connection counts as dead.
    std::chrono::milliseconds health_check_timeout{std::chrono::seconds(5)};
    /// Connections older than this are closed when next idle (with jitter); zero: never.
    std::chrono::milliseconds max_lifetime{std::chrono::minutes(30)};
    /// Connections idle longer than this are closed (down to `min_idle`); zero: never.
    std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
    /// Bounds each statement run through the pool (see `connection::set_query_timeout`); zero:
    /// no bound. It is what detects a silently stalled link during a query.
    std::chrono::milliseconds query_timeout{0};
    /// How the pool's query helpers and transactions repeat work after connection failures.
    retry_policy retry;
    /// How many statement texts each connection keeps as named prepared statements (least
    /// recently used ones are dropped); 0 sends every statement unnamed.
    std::size_t statement_cache_size = 256;
    /// When every connection is busy, the pool's query helpers send further statements down
    /// connections already in use, in pipelined batches, instead of waiting for one to free up.
    bool multiplex = true;
    /// The most statements sent in one pipelined batch.
    std::size_t pipeline_depth = 256;
    /// The server is reached through PgBouncer in transaction-pooling mode: no named prepared
    /// statements are kept and no session state is assumed.
    bool pgbouncer = false;

    /// Parses a URI or `key=value` string. Throws `pgco::error` with
    /// `errc::invalid_configuration` naming the offending parameter; the message never
    /// contains the password.
    static pool_options from_url(std::string_view url);

    /// Parses the value of the environment variable `name`; throws if it is unset or invalid.
    static pool_options from_env(const char* name = "DATABASE_URL");

    /// `conninfo` with every password replaced by `***`, fit for logs and error messages.
    std::string redacted() const;
};

/// Replaces the password in a URI or `key=value` connection string with `***`. Strings that
/// cannot be parsed are reduced to their scheme, so nothing secret can leak through them.
std::string redact_conninfo(std::string_view conninfo);

} // namespace pgco
