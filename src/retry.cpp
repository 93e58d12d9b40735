#include <pgco/retry.hpp>

#include <algorithm>

namespace pgco {

std::chrono::milliseconds retry_policy::pause_before(unsigned n) const
{
    if (backoff.empty() || n == 0)
        return std::chrono::milliseconds(0);
    return backoff[std::min<std::size_t>(n, backoff.size()) - 1];
}

namespace {

// The server ended the statement (or refused to start it) without running it to completion:
// shutdown (57P01 admin, 57P02 crash), not accepting connections yet (57P03), no free
// connection slot (53300), and outside explicit transactions serialization failures and
// deadlocks, where the server rolled the statement back.
bool server_aborted(std::string_view sqlstate)
{
    return sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03" ||
           sqlstate == "53300" || sqlstate == "40001" || sqlstate == "40P01";
}

} // namespace

retry_decision classify(const error& e) noexcept
{
    if (e.code().category() != pgco_category())
        return retry_decision::fail;
    switch (static_cast<errc>(e.code().value())) {
    case errc::cannot_connect:
    case errc::connect_timeout:
    case errc::connection_lost:
    case errc::query_timeout:
    case errc::server_error:
        break;
    default:
        // Cancellation, closed pools and connections, timeouts waiting for the pool, bad
        // parameters or rows, authentication: repeating would not help or is not wanted.
        return retry_decision::fail;
    }
    if (!e.maybe_applied() && server_aborted(e.sqlstate()))
        return retry_decision::retry;
    if (e.code() == errc::server_error)
        return retry_decision::fail; // SQL, constraint, permission errors: never
    if (!e.request_sent())
        return retry_decision::retry; // nothing reached the server
    if (!e.maybe_applied())
        return retry_decision::retry; // the server reported the statement failed
    return retry_decision::retry_if_idempotent;
}

bool maybe_applied(const error& e) noexcept
{
    return e.maybe_applied();
}

} // namespace pgco
