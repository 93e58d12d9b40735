// Binary results and binary parameters against the real server: every value of every column
// type pgco reads in binary must decode exactly as its text form does.

#include "support/server.hpp"

#include <pgco/connection.hpp>
#include <pgco/detail/binary.hpp>
#include <pgco/result.hpp>
#include <pgco/types.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/pfr/core.hpp>

#include <libpq-fe.h>

#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace asio = boost::asio;
using asio::awaitable;
using pgco::test::connected;
using pgco::test::run;

namespace {

struct pq_finish
{
    void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using pq_connection = std::unique_ptr<PGconn, pq_finish>;

/// A blocking libpq connection to the test server, with the session settings the text forms
/// below depend on spelled out.
pq_connection pq_connect()
{
    pq_connection c(PQconnectdb(pgco::test::database_url().c_str()));
    EXPECT_EQ(PQstatus(c.get()), CONNECTION_OK) << PQerrorMessage(c.get());
    PGresult* r = PQexec(c.get(), "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; "
                                  "SET extra_float_digits = 1; SET bytea_output = 'hex'");
    EXPECT_EQ(PQresultStatus(r), PGRES_COMMAND_OK) << PQerrorMessage(c.get());
    PQclear(r);
    return c;
}

/// Runs `sql` through PQexecParams, asking for results in `format` (0 text, 1 binary).
pgco::result fetch(PGconn* c, const char* sql, int format)
{
    PGresult* r = PQexecParams(c, sql, 0, nullptr, nullptr, nullptr, nullptr, format);
    EXPECT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQerrorMessage(c);
    return pgco::result(r);
}

// Values of every binary-safe type: ordinary ones, both ends of each range, the special
// values, and a row of NULLs. Only the first row is cast: the quoted literals of the others
// take its types (an unquoted -32768 would make the first column int4).
constexpr const char* all_types_sql = R"sql(
SELECT * FROM (VALUES
  (1::int2, 2::int4, 3::int8, 1.5::float4, 0.1::float8, true,
   '2024-02-29 13:45:00.25'::timestamp, '2024-02-29 13:45:00.25+05:30'::timestamptz,
   '2024-02-29'::date, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, 'hello world'::text,
   'varchar'::varchar(10), 'bp'::char(4), 'pg_class'::name, '\x00ff10'::bytea, 26::oid),
  ('-32768', '-2147483648', '-9223372036854775808', '-3.4028235e38', '-1.7976931348623157e308',
   'false', '4713-01-01 00:00:00 BC', '1969-12-31 23:59:59.999999+00', '4713-01-01 BC',
   '00000000-0000-0000-0000-000000000000', '', '', '', '', '\x', '0'),
  ('32767', '2147483647', '9223372036854775807', '3.4028235e38', '1.7976931348623157e308',
   'true', '1999-12-31 23:59:59.5', '1900-06-30 12:00:00-08', '1999-12-31',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', 'x', 'x', 'x', 'x', '\x00', '4294967295'),
  ('0', '-1', '-1', '1e-45', '5e-324', 'true', 'infinity', 'infinity', 'infinity',
   '12345678-9abc-def0-0123-456789abcdef', 'tab	and ''quote''', 'a', 'abcd', 'n', '\xff', '1'),
  ('-1', '0', '0', 'NaN', 'NaN', 'false', '-infinity', '-infinity', '-infinity',
   '12345678-9abc-def0-0123-456789abcdef', 'z', 'z', 'z', 'z', '\x', '2147483648'),
  ('0', '0', '0', 'Infinity', '-Infinity', 'false', '1970-01-01 00:00:00', '2000-01-01 00:00:00+00',
   '1970-01-01', '12345678-9abc-def0-0123-456789abcdef', 'z', 'z', 'z', 'z', '\x', '0'),
  ('0', '0', '0', '-0', '-0', 'true', '2000-01-01 00:00:00.000001', '294246-12-31 00:00:00+00',
   '5874897-12-31', '12345678-9abc-def0-0123-456789abcdef', 'z', 'z', 'z', 'z', '\x', '0'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL)
) AS t(i2, i4, i8, f4, f8, b, ts, tstz, d, u, t, vc, bp, nm, by, o)
)sql";

// Values that some C++ types cannot hold, for the comparison of failures: integers beyond
// int32, a double beyond float, a timestamp beyond sys_time<microseconds>.
constexpr const char* edge_sql = R"sql(
SELECT 4294967296::int8 AS big, 1e300::float8 AS huge, 1e-300::float8 AS tiny,
       '294276-12-31 23:59:59.999999'::timestamp AS late,
       '294276-12-31 23:59:59.999999+00'::timestamptz AS late_tz, 65536::oid AS o,
       123456.75::float4 AS mid_real, 1234567890123456::float8 AS sci, 0.0001::float8 AS small
)sql";

struct all_types
{
    std::optional<std::int16_t> i2;
    std::optional<std::int32_t> i4;
    std::optional<std::int64_t> i8;
    std::optional<float> f4;
    std::optional<double> f8;
    std::optional<bool> b;
    std::optional<pgco::timestamp> ts;
    std::optional<pgco::timestamp> tstz;
    std::optional<pgco::date> d;
    std::optional<pgco::uuid> u;
    std::optional<std::string> t;
    std::optional<std::string> vc;
    std::optional<std::string> bp;
    std::optional<std::string> nm;
    std::optional<pgco::bytes> by;
    std::optional<std::uint32_t> o;
};

// An exact, printable account of a decoded value, so that outcomes compare as strings.
template <class T>
std::string show(const T& v)
{
    if constexpr (std::is_same_v<T, bool>) {
        return v ? "true" : "false";
    } else if constexpr (std::is_integral_v<T>) {
        return std::to_string(v);
    } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        // Bits, so that -0 and 0 differ; every NaN counts as one.
        if (std::isnan(v))
            return "NaN";
        if constexpr (std::is_same_v<T, float>)
            return "f" + std::to_string(std::bit_cast<std::uint32_t>(v));
        else
            return "d" + std::to_string(std::bit_cast<std::uint64_t>(v));
    } else if constexpr (std::is_same_v<T, std::string>) {
        return "'" + v + "'";
    } else if constexpr (std::is_same_v<T, pgco::bytes>) {
        std::string out = "bytes:";
        for (std::byte b : v)
            out += std::to_string(static_cast<int>(b)) + ",";
        return out;
    } else if constexpr (std::is_same_v<T, pgco::uuid>) {
        return pgco::to_string(v);
    } else {
        return "t" + std::to_string(v.time_since_epoch().count()); // timestamp, date
    }
}

/// What reading (`row`, `c`) as `std::optional<T>` gives: the value, or the error code.
template <class T>
std::string outcome(const pgco::result& res, std::size_t row, std::size_t c)
{
    try {
        auto v = res.get<std::optional<T>>(row, c);
        return v ? show(*v) : "NULL";
    } catch (const pgco::error& e) {
        return "error " + std::string(e.code().message());
    }
}

/// Compares text and binary outcomes of every (row, column) for `T`, wherever T accepts the
/// column's type; returns how many values it compared.
template <class T>
int compare_as(const pgco::result& text, const pgco::result& binary, const char* cpp_name)
{
    int compared = 0;
    for (std::size_t c = 0; c < text.columns(); ++c) {
        if (!pgco::detail::value_traits<T>::accepts(text.column_type(c)))
            continue;
        for (std::size_t r = 0; r < text.size(); ++r) {
            EXPECT_EQ(outcome<T>(text, r, c), outcome<T>(binary, r, c))
                << cpp_name << " from column " << text.column_name(c) << " ("
                << pgco::type_name(text.column_type(c)) << "), row " << r + 1 << ": text '"
                << text.value(r, c) << "'";
            ++compared;
        }
    }
    return compared;
}

int compare_every_type(const pgco::result& text, const pgco::result& binary)
{
    return compare_as<std::int16_t>(text, binary, "int16_t") +
           compare_as<std::int32_t>(text, binary, "int32_t") +
           compare_as<std::int64_t>(text, binary, "int64_t") +
           compare_as<std::uint16_t>(text, binary, "uint16_t") +
           compare_as<std::uint32_t>(text, binary, "uint32_t") +
           compare_as<std::uint64_t>(text, binary, "uint64_t") +
           compare_as<float>(text, binary, "float") + compare_as<double>(text, binary, "double") +
           compare_as<bool>(text, binary, "bool") +
           compare_as<std::string>(text, binary, "std::string") +
           compare_as<pgco::bytes>(text, binary, "pgco::bytes") +
           compare_as<pgco::timestamp>(text, binary, "pgco::timestamp") +
           compare_as<pgco::date>(text, binary, "pgco::date") +
           compare_as<pgco::uuid>(text, binary, "pgco::uuid");
}

template <class T>
std::string show_optional(const std::optional<T>& v)
{
    return v ? show(*v) : "NULL";
}

template <class Row, std::size_t... I>
void expect_same_fields(const Row& a, const Row& b, std::size_t row, std::index_sequence<I...>)
{
    auto same = [&](const auto& x, const auto& y, std::size_t field) {
        EXPECT_EQ(show_optional(x), show_optional(y)) << "row " << row + 1 << ", field " << field;
    };
    (same(boost::pfr::get<I>(a), boost::pfr::get<I>(b), I + 1), ...);
}

pgco::timestamp ts_us(std::int64_t unix_us)
{
    return pgco::timestamp(std::chrono::microseconds(unix_us));
}

} // namespace

TEST(binary, every_safe_type_decodes_as_its_text_form)
{
    auto c = pq_connect();
    const pgco::result text = fetch(c.get(), all_types_sql, 0);
    const pgco::result binary = fetch(c.get(), all_types_sql, 1);
    ASSERT_EQ(text.size(), 8u);
    ASSERT_EQ(binary.size(), 8u);
    for (std::size_t col = 0; col < binary.columns(); ++col) {
        EXPECT_TRUE(pgco::detail::binary_result_safe(binary.column_type(col)))
            << binary.column_name(col);
        EXPECT_TRUE(binary.is_binary(col));
        EXPECT_FALSE(text.is_binary(col));
    }

    const auto from_text = text.as<all_types>();
    const auto from_binary = binary.as<all_types>();
    ASSERT_EQ(from_text.size(), from_binary.size());
    for (std::size_t r = 0; r < from_text.size(); ++r)
        expect_same_fields(from_text[r], from_binary[r], r,
                           std::make_index_sequence<boost::pfr::tuple_size_v<all_types>>{});

    // A few values checked outright, not only against the text path.
    using namespace std::chrono;
    EXPECT_EQ(from_binary[1].i8, std::numeric_limits<std::int64_t>::min());
    EXPECT_EQ(from_binary[2].i8, std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(from_binary[0].tstz, sys_days(2024y / 2 / 29) + 8h + 15min + 250ms);
    EXPECT_EQ(from_binary[1].tstz, ts_us(-1));
    EXPECT_EQ(from_binary[1].d, sys_days(year(-4712) / 1 / 1));
    EXPECT_EQ(from_binary[1].ts, sys_days(year(-4712) / 1 / 1) + microseconds(0));
    EXPECT_EQ(from_binary[3].ts, pgco::timestamp::max());
    EXPECT_EQ(from_binary[4].tstz, pgco::timestamp::min());
    EXPECT_EQ(from_binary[4].d, pgco::date::min());
    EXPECT_TRUE(std::isnan(*from_binary[4].f8));
    EXPECT_EQ(from_binary[3].f8, 5e-324);
    EXPECT_TRUE(std::signbit(*from_binary[6].f8));
    EXPECT_EQ(from_binary[4].o, 2147483648u);
    EXPECT_EQ(from_binary[2].by, pgco::bytes{std::byte{0}});
    EXPECT_EQ(pgco::to_string(*from_binary[0].u), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    EXPECT_FALSE(from_binary[7].i2 || from_binary[7].ts || from_binary[7].u || from_binary[7].by);
}

TEST(binary, every_accepted_cpp_type_reads_both_forms_alike)
{
    auto c = pq_connect();
    const pgco::result text = fetch(c.get(), all_types_sql, 0);
    const pgco::result binary = fetch(c.get(), all_types_sql, 1);
    // Each value read as every C++ type that accepts its column: same value or same error
    // (int8 into int16_t, NULL, infinity as time points...). std::string included: it gets the
    // text the server prints.
    EXPECT_GT(compare_every_type(text, binary), 8 * 16);

    const pgco::result edge_text = fetch(c.get(), edge_sql, 0);
    const pgco::result edge_binary = fetch(c.get(), edge_sql, 1);
    EXPECT_GT(compare_every_type(edge_text, edge_binary), 9);
    EXPECT_THROW(edge_binary.get<std::int32_t>(0, 0), pgco::error);
    EXPECT_THROW(edge_binary.get<float>(0, 1), pgco::error);
    EXPECT_THROW(edge_binary.get<pgco::timestamp>(0, 3), pgco::error);
    try {
        edge_binary.get<std::int32_t>(0, 0);
    } catch (const pgco::error& e) {
        EXPECT_EQ(e.code(), pgco::errc::invalid_value);
        EXPECT_NE(std::string(e.what()).find("binary 0x0000000100000000"), std::string::npos)
            << e.what();
    }
}

TEST(binary, other_types_are_not_binary_safe)
{
    auto c = pq_connect();
    const pgco::result r = fetch(c.get(),
                                 "SELECT 1.5::numeric, '{}'::json, '{}'::jsonb, ARRAY[1], "
                                 "interval '1 day', 'x'::\"char\", time '12:00'",
                                 0);
    for (std::size_t col = 0; col < r.columns(); ++col)
        EXPECT_FALSE(pgco::detail::binary_result_safe(r.column_type(col)))
            << pgco::type_name(r.column_type(col));
}

TEST(binary, parameters_round_trip_through_the_server)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        using i16 = std::numeric_limits<std::int16_t>;
        using i32 = std::numeric_limits<std::int32_t>;
        using i64 = std::numeric_limits<std::int64_t>;
        // The server sees each integer width as its own type.
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT pg_typeof($1)::text || ' ' || "
                                                    "pg_typeof($2)::text || ' ' || "
                                                    "pg_typeof($3)::text || ' ' || "
                                                    "pg_typeof($4)::text || ' ' || "
                                                    "pg_typeof($5)::text || ' ' || "
                                                    "pg_typeof($6)::text",
                                                    std::int16_t{1}, std::int32_t{1},
                                                    std::int64_t{1}, 1.0f, 1.0, true),
                  "smallint integer bigint real double precision boolean");
        // Values in named arrays, not braced lists: no temporaries across co_await (GCC 12).
        const std::array<std::int16_t, 4> int16s{i16::min(), -1, 0, i16::max()};
        for (std::int16_t v : int16s)
            EXPECT_EQ(co_await c.query_one<std::int16_t>("SELECT $1", v), v);
        const std::array<std::int32_t, 5> int32s{i32::min(), -1, 0, 258, i32::max()};
        for (std::int32_t v : int32s)
            EXPECT_EQ(co_await c.query_one<std::int32_t>("SELECT $1", v), v);
        const std::array<std::int64_t, 4> int64s{i64::min(), -1, std::int64_t{1} << 40, i64::max()};
        for (std::int64_t v : int64s)
            EXPECT_EQ(co_await c.query_one<std::int64_t>("SELECT $1", v), v);
        const std::array<std::uint16_t, 2> uint16s{0, 65535};
        for (std::uint16_t v : uint16s)
            EXPECT_EQ(co_await c.query_one<std::uint16_t>("SELECT $1", v), v);
        const std::array<std::uint32_t, 2> uint32s{0, 4294967295u};
        for (std::uint32_t v : uint32s)
            EXPECT_EQ(co_await c.query_one<std::uint32_t>("SELECT $1", v), v);
        const std::array<std::uint64_t, 2> uint64s{0, 18446744073709551615u};
        for (std::uint64_t v : uint64s)
            EXPECT_EQ(co_await c.query_one<std::uint64_t>("SELECT $1", v), v);
        const std::array<double, 5> doubles{0.1, -0.0, 5e-324, 1.7976931348623157e308,
                                            -std::numeric_limits<double>::infinity()};
        for (double v : doubles) {
            auto back = co_await c.query_one<double>("SELECT $1", v);
            EXPECT_EQ(std::bit_cast<std::uint64_t>(back), std::bit_cast<std::uint64_t>(v)) << v;
        }
        const double nan = std::nan("");
        EXPECT_TRUE(std::isnan(co_await c.query_one<double>("SELECT $1", nan)));
        const std::array<float, 4> floats{0.1f, 1e-45f, 3.4028235e38f,
                                          std::numeric_limits<float>::infinity()};
        for (float v : floats)
            EXPECT_EQ(co_await c.query_one<float>("SELECT $1", v), v);
        EXPECT_EQ(co_await c.query_one<bool>("SELECT $1", true), true);
        EXPECT_EQ(co_await c.query_one<bool>("SELECT $1", false), false);
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT $1::text", 0.1), "0.1");
        // The server does arithmetic on them as numbers of their type.
        EXPECT_EQ(co_await c.query_one<std::int64_t>("SELECT $1 + $2 + $3", std::int16_t{-2},
                                                     std::int32_t{70000}, i64::min() + 1),
                  i64::min() + 69999);
        EXPECT_EQ(co_await c.query_one<bool>("SELECT $1 AND NOT $2", true, false), true);
        // NULLs keep the type a value would have.
        const std::optional<std::int16_t> no_int16;
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT pg_typeof($1)::text", no_int16),
                  "smallint");
        const std::optional<double> no_double;
        EXPECT_EQ(co_await c.query_one<std::optional<double>>("SELECT $1", no_double),
                  std::nullopt);
    });
}

TEST(binary, new_value_types_round_trip)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        co_await c.exec("SET TimeZone = 'Europe/Amsterdam'");
        using namespace std::chrono;
        pgco::uuid u;
        for (std::size_t i = 0; i < u.octets.size(); ++i)
            u.octets[i] = static_cast<unsigned char>(i * 17);
        EXPECT_EQ(co_await c.query_one<pgco::uuid>("SELECT $1", u), u);
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT $1::text", u),
                  "00112233-4455-6677-8899-aabbccddeeff");

        // A time point is sent in UTC: the same instant into timestamptz, the UTC wall-clock
        // time into timestamp, whatever the session's time zone.
        const std::array<pgco::timestamp, 6> times{ts_us(0),
                                                   ts_us(-1),
                                                   ts_us(1'709'214'300'250'000),
                                                   pgco::timestamp(sys_days(year(-4712) / 1 / 1)),
                                                   pgco::timestamp::max(),
                                                   pgco::timestamp::min()};
        for (pgco::timestamp t : times) {
            EXPECT_EQ(co_await c.query_one<pgco::timestamp>("SELECT $1::timestamptz", t), t);
            EXPECT_EQ(co_await c.query_one<pgco::timestamp>("SELECT $1::timestamp", t), t);
        }
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT $1::timestamptz::text", ts_us(0)),
                  "1970-01-01 01:00:00+01");
        const std::array<pgco::date, 3> dates{pgco::date(sys_days(2024y / 2 / 29)),
                                              pgco::date(sys_days(year(-43) / 3 / 15)),
                                              pgco::date::max()};
        for (pgco::date d : dates)
            EXPECT_EQ(co_await c.query_one<pgco::date>("SELECT $1::date", d), d);
    });
}
