#pragma once

#include <pgco/config.hpp>
#include <pgco/detail/value_traits.hpp>
#include <pgco/error.hpp>
#include <pgco/result.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pgco {

class connection;
class batch;

namespace detail {
struct connection_impl;
connection_impl& impl_of(connection& c) noexcept;
std::shared_ptr<connection_impl> shared_impl_of(connection& c) noexcept;

/// Says whether a statement's result columns (their type OIDs) may be asked for in binary
/// format because the caller decodes them itself exactly as from text (`binary_row_safe<Row>`);
/// null: text.
using binary_check = bool (*)(const oid* types, std::size_t n) noexcept;

/// Bound parameters in the parallel arrays `PQsendQueryParams` takes.
struct params_view
{
    int count = 0;
    const oid* types = nullptr;
    const char* const* values = nullptr;
    const int* lengths = nullptr;
    const int* formats = nullptr;
};

template <std::size_t N>
struct param_pack
{
    std::array<param_slot, N> slots;
    std::array<oid, N> types;
    std::array<const char*, N> values;
    std::array<int, N> lengths;
    std::array<int, N> formats;

    template <class... P>
    explicit param_pack(const P&... params)
    {
        std::size_t i = 0;
        (encode_one(params, i++), ...);
    }
    param_pack(const param_pack&) = delete; // slots may point into themselves

    template <class P>
    void encode_one(const P& value, std::size_t i)
    {
        if (!encode_param(value, slots[i]))
            throw error(errc::invalid_parameter,
                        "parameter $" + std::to_string(i + 1) +
                            " cannot be sent: text must not contain a NUL byte");
        types[i] = slots[i].type;
        values[i] = slots[i].value;
        lengths[i] = slots[i].length;
        formats[i] = slots[i].format;
    }

    params_view view() const noexcept
    {
        return {static_cast<int>(N), types.data(), values.data(), lengths.data(), formats.data()};
    }
};

template <>
struct param_pack<0>
{
    params_view view() const noexcept { return {}; }
};
} // namespace detail

/// One PostgreSQL connection driven by libpq in non-blocking mode on an Asio executor.
///
/// Every wait (name lookup, connecting, sending, reading) is an Asio operation: no thread
/// blocks. Values are always sent as bound parameters.
///
/// Not thread-safe: use one connection from one strand at a time, one operation at a time
/// (a second concurrent operation fails with `connection_busy`).
///
/// Lifetimes: the SQL text and parameters must stay valid until the awaitable completes
/// (temporaries inside the `co_await` expression do).
///
/// Cancellation: an operation awaited with a cancellation slot (for example through
/// `boost::asio::experimental::awaitable_operators`) ends at once with `errc::cancelled`; the
/// server is asked to cancel the statement from a helper thread (libpq's cancel call blocks),
/// and the connection stays usable: the next operation first discards what is left of the
/// cancelled one.
class connection
{
public:
    using executor_type = boost::asio::any_io_executor;

    /// A closed connection that will run on `ex`.
    explicit connection(executor_type ex);
    ~connection();
    connection(connection&&) noexcept;
    connection& operator=(connection&&) noexcept;

    /// The executor every operation runs on.
    executor_type get_executor() const noexcept;

    /// Opens the connection described by `opts.conninfo` within `opts.connect_timeout`,
    /// resolving host names through Asio. Throws `pgco::error`: `cannot_connect` (P1001),
    /// `connect_timeout` (P1002), `authentication_failed`. Messages never contain the password.
    boost::asio::awaitable<void> connect(pool_options opts);

    /// Opens a connection from a URL (see `pool_options::from_url`).
    boost::asio::awaitable<void> connect(std::string_view url)
    {
        co_await connect(pool_options::from_url(url));
    }

    /// Runs one statement with bound parameters; returns its complete result.
    template <class... Params>
    boost::asio::awaitable<result> exec(std::string_view sql, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        co_return co_await exec_params(sql, pack.view());
    }

    /// Runs a statement and maps every row to `Row` (an aggregate or a single value type).
    template <class Row, class... Params>
    boost::asio::awaitable<std::vector<Row>> query(std::string_view sql, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        auto res = co_await exec_params(sql, pack.view(), &detail::binary_row_safe<Row>);
        co_return res.template as<Row>();
    }

    /// Runs a statement and maps its first row to `Row`; throws `errc::no_rows` if there is
    /// none.
    template <class Row, class... Params>
    boost::asio::awaitable<Row> query_one(std::string_view sql, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        auto res = co_await exec_params(sql, pack.view(), &detail::binary_row_safe<Row>);
        if (res.empty())
            throw error(errc::no_rows, "the query returned no rows");
        co_return res.template row_as<Row>(0);
    }

    /// Runs a statement and returns the number of rows it affected.
    template <class... Params>
    boost::asio::awaitable<std::uint64_t> execute(std::string_view sql, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        auto res = co_await exec_params(sql, pack.view(), nullptr);
        co_return res.rows_affected();
    }

    /// Runs a statement with parameters already in libpq's layout.
    ///
    /// SELECT, INSERT, UPDATE, DELETE, WITH, VALUES and TABLE statements run as named prepared
    /// statements, cached per connection (`pool_options::statement_cache_size`; the first run
    /// prepares in the same round trip). With `binary`, the caller decodes the result itself,
    /// so columns it reads exactly may come in binary; raw results (`exec`) are always text.
    boost::asio::awaitable<result> exec_params(std::string_view sql, detail::params_view params);
    boost::asio::awaitable<result> exec_params(std::string_view sql, detail::params_view params,
                                               detail::binary_check binary);

    /// Runs every statement of `b` in one pipeline with one Sync (one round trip, one implicit
    /// transaction: all take effect or none does) and returns their results in order. If one
    /// fails, the error names it ("statement 2 of the batch: ...") and none took effect.
    boost::asio::awaitable<std::vector<result>> pipeline(batch& b);

    /// Bounds every statement from sending to its last result; zero (the default) means no
    /// bound. On expiry the server is asked to cancel, the connection is closed (a stalled
    /// link cannot be trusted) and the statement fails with `errc::query_timeout` (P1008).
    void set_query_timeout(std::chrono::milliseconds timeout) noexcept;

    /// True between a successful `connect` and `close` (or the loss of the connection).
    bool is_open() const noexcept;

    /// True if the current or last request was handed to the server, at least in part. False
    /// means the server cannot have run it, so repeating it cannot apply it twice.
    bool request_sent() const noexcept;

    /// Where the session stands with respect to transactions.
    enum class transaction_state
    {
        idle,           ///< outside any transaction
        in_transaction, ///< inside a transaction block
        failed,         ///< inside a transaction block that an error aborted
        unknown,        ///< busy, closed or broken
    };
    /// The session's transaction state as of the last result.
    transaction_state transaction_status() const noexcept;

    /// The server process serving this connection (as `pg_backend_pid()`), or 0.
    int backend_pid() const noexcept;

    /// Closes the connection. An operation in progress ends with `connection_closed`.
    void close() noexcept;

private:
    friend detail::connection_impl& detail::impl_of(connection& c) noexcept;
    friend std::shared_ptr<detail::connection_impl> detail::shared_impl_of(connection& c) noexcept;
    std::shared_ptr<detail::connection_impl> impl_;
};

} // namespace pgco
