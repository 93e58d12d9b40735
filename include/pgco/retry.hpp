#pragma once

#include <pgco/error.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace pgco {

/// How a statement may be repeated after a failure (see `retry_policy` and DESIGN.md's table).
enum class retry_mode
{
    /// Repeat only where that cannot apply the statement twice: the request never reached the
    /// server, or the server reported that it aborted the statement.
    automatic,
    /// The caller says repeating is harmless: also repeat when the connection was lost after
    /// the request was sent and no answer came.
    idempotent,
    /// Never repeat.
    never,
};

/// Tag values for the per-statement overloads: `db.execute(pgco::idempotent, sql, ...)`.
inline constexpr retry_mode idempotent = retry_mode::idempotent;
inline constexpr retry_mode no_retry = retry_mode::never;

/// When and how often a failed statement (or transaction) is tried again.
///
/// The defaults follow the project's promise: on a connection failure reconnect at once, then
/// after 2 s, then after 4 s (3 attempts after the first try), and give up with an error that
/// lists every attempt. Waiting uses Asio timers, and the caller's cancellation ends the loop.
struct retry_policy
{
    /// Attempts after the first try; 0 turns retrying off.
    unsigned attempts = 3;
    /// Pause before each attempt; the last entry repeats if there are more attempts.
    std::vector<std::chrono::milliseconds> backoff{std::chrono::milliseconds(0),
                                                   std::chrono::milliseconds(2000),
                                                   std::chrono::milliseconds(4000)};
    /// Each pause is lengthened by up to this fraction at random (0.1: up to +10 %), so that
    /// many clients do not reconnect in lockstep.
    double jitter = 0.0;
    /// The whole loop gives up after this long (no further attempt starts); zero: no limit.
    std::chrono::milliseconds deadline{0};
    /// Treat every statement as idempotent (retry even when an answer was lost).
    bool retry_all = false;

    /// The pause before attempt `n` (1-based), without jitter.
    std::chrono::milliseconds pause_before(unsigned n) const;
};

/// What the retry layer makes of a failure.
enum class retry_decision
{
    retry,               ///< repeating cannot apply the statement twice
    retry_if_idempotent, ///< the answer was lost after sending: repeat only if idempotent
    fail,                ///< never repeat (SQL error, authentication, cancellation...)
};

/// Classifies a failure of a single statement run outside an explicit transaction, by when it
/// happened and what it was (DESIGN.md's retry decision table).
retry_decision classify(const error& e) noexcept;

/// True if a failed statement may nevertheless have taken effect: its request reached the
/// server and the server did not report that it aborted it. A write that failed with this
/// false was not applied; with this true its outcome is unknown.
bool maybe_applied(const error& e) noexcept;

} // namespace pgco
