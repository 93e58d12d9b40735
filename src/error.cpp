#include <pgco/error.hpp>

namespace pgco {
namespace {

class category final : public std::error_category
{
public:
    const char* name() const noexcept override { return "pgco"; }

    std::string message(int value) const override
    {
        switch (static_cast<errc>(value)) {
        case errc::ok:
            return "success";
        case errc::cannot_connect:
            return "P1001: cannot reach the database server";
        case errc::connect_timeout:
            return "P1002: the database server was reached but timed out";
        case errc::connection_lost:
            return "P1017: server closed the connection";
        case errc::authentication_failed:
            return "authentication failed";
        case errc::server_error:
            return "the server reported an error";
        case errc::cancelled:
            return "the operation was cancelled";
        case errc::connection_closed:
            return "the connection is closed";
        case errc::connection_busy:
            return "another operation is running on this connection";
        case errc::invalid_configuration:
            return "invalid configuration";
        case errc::invalid_parameter:
            return "invalid statement or query parameter";
        case errc::column_count_mismatch:
            return "the result's column count does not match the row type";
        case errc::type_mismatch:
            return "a column's type does not match the requested type";
        case errc::unexpected_null:
            return "NULL in a column read into a non-optional field";
        case errc::invalid_value:
            return "a column value could not be parsed";
        case errc::no_rows:
            return "the query returned no rows";
        case errc::client_failure:
            return "libpq failure";
        case errc::pool_timeout:
            return "P2024: timed out fetching a connection from the pool";
        case errc::pool_closed:
            return "the pool is closed";
        case errc::pool_exhausted:
            return "too many callers are waiting for a pooled connection";
        case errc::query_timeout:
            return "P1008: the query timed out";
        case errc::commit_outcome_unknown:
            return "the connection was lost during COMMIT and the outcome is unknown";
        case errc::transaction_rolled_back:
            return "the transaction was rolled back";
        }
        return "unknown pgco error";
    }

    std::error_condition default_error_condition(int value) const noexcept override
    {
        switch (static_cast<errc>(value)) {
        case errc::cancelled:
            return std::errc::operation_canceled;
        case errc::connect_timeout:
        case errc::pool_timeout:
        case errc::query_timeout:
            return std::errc::timed_out;
        case errc::cannot_connect:
            return std::errc::connection_refused;
        case errc::connection_lost:
            return std::errc::connection_reset;
        case errc::invalid_configuration:
        case errc::invalid_parameter:
            return std::errc::invalid_argument;
        default:
            return {value, *this};
        }
    }
};

} // namespace

const std::error_category& pgco_category() noexcept
{
    static const category instance;
    return instance;
}

error::error(errc code, const std::string& message) : std::system_error(code, message) {}

error::error(errc code, const std::string& message, std::string sqlstate,
             std::string server_message, std::string detail, std::string hint, bool request_sent)
    : std::system_error(code, message), sqlstate_(std::move(sqlstate)),
      server_message_(std::move(server_message)), detail_(std::move(detail)),
      hint_(std::move(hint)), request_sent_(request_sent),
      maybe_applied_(request_sent && sqlstate_.empty())
{}

bool is_connection_error(const std::error_code& ec) noexcept
{
    if (ec.category() != pgco_category())
        return false;
    switch (static_cast<errc>(ec.value())) {
    case errc::cannot_connect:
    case errc::connect_timeout:
    case errc::connection_lost:
    case errc::query_timeout:
        return true;
    default:
        return false;
    }
}

bool is_connection_sqlstate(std::string_view sqlstate) noexcept
{
    return sqlstate.starts_with("08") || sqlstate == "57P01" || sqlstate == "57P02" ||
           sqlstate == "57P03";
}

bool is_connection_error(const error& e) noexcept
{
    return is_connection_error(e.code()) || is_connection_sqlstate(e.sqlstate());
}

} // namespace pgco
