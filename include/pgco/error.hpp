#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace pgco {

/// Client-side error conditions; the server's own SQLSTATE travels beside them in `pgco::error`.
enum class errc
{
    ok = 0,
    /// P1001: the server could not be reached (refused, unreachable, name not resolved).
    cannot_connect,
    /// P1002: connecting did not finish within `connect_timeout`.
    connect_timeout,
    /// P1017: the server closed the connection, or the socket failed, while in use.
    connection_lost,
    /// The server rejected the credentials (SQLSTATE class 28).
    authentication_failed,
    /// The server reported an error for the statement; see `error::sqlstate()`.
    server_error,
    /// The statement was cancelled through Asio cancellation.
    cancelled,
    /// The connection was closed (or never opened) by the application.
    connection_closed,
    /// Another operation is already running on this connection.
    connection_busy,
    /// A configuration value (URL, parameter, environment variable) is malformed.
    invalid_configuration,
    /// A statement or parameter value cannot be sent (for example text containing a NUL
    /// byte); nothing was sent.
    invalid_parameter,
    /// The result has a different number of columns than the row type has fields.
    column_count_mismatch,
    /// A column's PostgreSQL type cannot be decoded into the requested C++ type.
    type_mismatch,
    /// A NULL value met a field that is not a `std::optional`.
    unexpected_null,
    /// A column value could not be parsed as the requested type.
    invalid_value,
    /// `query_one` found no row.
    no_rows,
    /// libpq failed in a way that fits no other code (out of memory, protocol violation).
    client_failure,
    /// P2024: no pooled connection became available within `pool_timeout`.
    pool_timeout,
    /// The pool is closed (or closing): it hands out no more connections.
    pool_closed,
    /// More than `max_waiters` callers were already waiting for a connection.
    pool_exhausted,
    /// The connection was lost after COMMIT was sent and the server could not tell whether the
    /// transaction committed. It is never retried: check the data before repeating it.
    commit_outcome_unknown,
    /// P1008: a statement did not complete within `query_timeout`; the connection was closed
    /// (a stalled link cannot be trusted), so the statement's outcome is unknown.
    query_timeout,
    /// COMMIT found the transaction already failed (a statement in it raised an error that was
    /// caught), so the server rolled it back.
    transaction_rolled_back,
};

/// The `std::error_category` of `pgco::errc`.
const std::error_category& pgco_category() noexcept;

/// Makes `errc` usable as `std::error_code`.
inline std::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), pgco_category()};
}

/// The exception every pgco operation throws.
///
/// Carries the client-side `code()`, the server's five-character SQLSTATE (empty when the
/// failure did not come from the server), the server's primary message, detail and hint,
/// and whether the failed request had been handed to the server (which the retry layer needs
/// to decide whether repeating it could apply a write twice). `what()` never contains a
/// password.
class error : public std::system_error
{
public:
    error(errc code, const std::string& message);
    error(errc code, const std::string& message, std::string sqlstate, std::string server_message,
          std::string detail, std::string hint, bool request_sent);

    /// The SQLSTATE reported by the server, e.g. "42P01", or empty.
    const std::string& sqlstate() const noexcept { return sqlstate_; }
    /// The server's primary message, or empty.
    const std::string& server_message() const noexcept { return server_message_; }
    /// The server's DETAIL field, or empty.
    const std::string& detail() const noexcept { return detail_; }
    /// The server's HINT field, or empty.
    const std::string& hint() const noexcept { return hint_; }
    /// True if the request had been (at least partly) sent to the server when it failed.
    bool request_sent() const noexcept { return request_sent_; }

    /// True if the failed work may nevertheless have taken effect (see `pgco::maybe_applied`).
    /// By default: the request was sent and the server reported no error for it.
    bool maybe_applied() const noexcept { return maybe_applied_; }
    /// Overrides `maybe_applied()`, for layers that know more (a success result before a
    /// FATAL message; an earlier attempt of the same statement).
    void set_maybe_applied(bool value) noexcept { maybe_applied_ = value; }

private:
    std::string sqlstate_;
    std::string server_message_;
    std::string detail_;
    std::string hint_;
    bool request_sent_ = false;
    bool maybe_applied_ = false;
};

/// True if the code says the connection itself failed (could not connect, timed out, lost).
bool is_connection_error(const std::error_code& ec) noexcept;

/// True if the failure was at the connection level: the client-side code says so, or the
/// SQLSTATE is of class 08 (connection exception) or 57P01/57P02/57P03 (server shutting down or
/// starting up). A connection that reported such an error must not be reused.
bool is_connection_error(const error& e) noexcept;

/// True if a SQLSTATE means the connection is unusable (class 08, 57P01, 57P02, 57P03).
bool is_connection_sqlstate(std::string_view sqlstate) noexcept;

/// True if the request had been sent when it failed: retrying it could apply it twice unless
/// the statement is idempotent or the server reported it aborted.
inline bool was_request_sent(const error& e) noexcept
{
    return e.request_sent();
}

} // namespace pgco

template <>
struct std::is_error_code_enum<pgco::errc> : std::true_type
{};
