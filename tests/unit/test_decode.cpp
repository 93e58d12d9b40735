// Decoding and encoding of single values, without a server.

#include <pgco/detail/value_traits.hpp>
#include <pgco/result.hpp>
#include <pgco/types.hpp>

#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

using pgco::detail::param_slot;
using pgco::detail::value_traits;

namespace {

template <class T>
std::optional<T> decode(std::string_view text)
{
    T out{};
    if (!value_traits<T>::decode(text, out))
        return std::nullopt;
    return out;
}

template <class T>
std::string encode(const T& v, param_slot& p)
{
    EXPECT_TRUE(pgco::detail::encode_param(v, p));
    return p.value ? std::string(p.value, static_cast<std::size_t>(p.length)) : "<null>";
}

} // namespace

TEST(decode, integers_are_range_checked_and_whole)
{
    EXPECT_EQ(decode<std::int32_t>("42"), 42);
    EXPECT_EQ(decode<std::int32_t>("-2147483648"), std::numeric_limits<std::int32_t>::min());
    EXPECT_EQ(decode<std::int16_t>("32768"), std::nullopt);
    EXPECT_EQ(decode<std::int64_t>("9223372036854775807"),
              std::numeric_limits<std::int64_t>::max());
    EXPECT_EQ(decode<std::uint32_t>("-1"), std::nullopt);
    EXPECT_EQ(decode<std::int32_t>("12abc"), std::nullopt);
    EXPECT_EQ(decode<std::int32_t>("1.5"), std::nullopt);
    EXPECT_EQ(decode<std::int32_t>(""), std::nullopt);
}

TEST(decode, floating_point_including_postgres_spellings)
{
    EXPECT_EQ(decode<double>("0.1"), 0.1);
    EXPECT_EQ(decode<double>("-1e+300"), -1e300);
    EXPECT_EQ(decode<double>("Infinity"), std::numeric_limits<double>::infinity());
    EXPECT_EQ(decode<double>("-Infinity"), -std::numeric_limits<double>::infinity());
    EXPECT_TRUE(std::isnan(*decode<double>("NaN")));
    EXPECT_EQ(decode<float>("3.25"), 3.25f);
    EXPECT_EQ(decode<double>("1.5x"), std::nullopt);
}

TEST(decode, bool_text_and_bytea)
{
    EXPECT_EQ(decode<bool>("t"), true);
    EXPECT_EQ(decode<bool>("f"), false);
    EXPECT_EQ(decode<bool>("true"), std::nullopt);
    EXPECT_EQ(decode<std::string>("any text"), "any text");
    EXPECT_EQ(decode<pgco::bytes>("\\x00ff10"),
              (pgco::bytes{std::byte{0}, std::byte{0xff}, std::byte{0x10}}));
    EXPECT_EQ(decode<pgco::bytes>("\\x"), pgco::bytes{});
    EXPECT_EQ(decode<pgco::bytes>("\\x0"), std::nullopt);     // odd length
    EXPECT_EQ(decode<pgco::bytes>("\\xzz"), std::nullopt);    // not hex
    EXPECT_EQ(decode<pgco::bytes>("\\000abc"), std::nullopt); // escape format
}

TEST(decode, accepted_column_types)
{
    using namespace pgco::oids;
    EXPECT_TRUE(value_traits<std::int64_t>::accepts(int4));
    EXPECT_TRUE(value_traits<std::int16_t>::accepts(int8)); // range checked per value
    EXPECT_FALSE(value_traits<int>::accepts(text));
    EXPECT_FALSE(value_traits<int>::accepts(float8));
    EXPECT_TRUE(value_traits<double>::accepts(numeric));
    EXPECT_FALSE(value_traits<bool>::accepts(int4));
    EXPECT_TRUE(value_traits<std::string>::accepts(uuid));
    EXPECT_FALSE(value_traits<pgco::bytes>::accepts(text));
    EXPECT_TRUE(value_traits<std::optional<int>>::accepts(int2));
}

TEST(encode, parameters_carry_text_type_and_format)
{
    using namespace pgco::oids;
    using namespace std::string_literals;
    param_slot a, b, c, d, e, f, g, h, i;
    // Numbers and bool travel in binary, in network byte order.
    EXPECT_EQ(encode(std::int32_t{-7}, a), "\xff\xff\xff\xf9"s);
    EXPECT_EQ(a.type, int4);
    EXPECT_EQ(a.format, 1);
    EXPECT_EQ(encode(std::int64_t{1} << 40, b), "\0\0\x01\0\0\0\0\0"s);
    EXPECT_EQ(b.type, int8);
    EXPECT_EQ(encode(0.1, c), "\x3f\xb9\x99\x99\x99\x99\x99\x9a"s);
    EXPECT_EQ(c.type, float8);
    EXPECT_EQ(c.format, 1);
    EXPECT_EQ(encode(-std::numeric_limits<double>::infinity(), d), "\xff\xf0\0\0\0\0\0\0"s);
    EXPECT_EQ(encode(true, e), "\x01"s);
    EXPECT_EQ(e.type, bool_);
    EXPECT_EQ(e.format, 1);
    EXPECT_EQ(encode("literal", f), "literal");
    EXPECT_EQ(f.type, unspecified); // the server infers text parameters' types
    std::string_view view = "view-and-more";
    EXPECT_EQ(encode(view.substr(0, 4), g), "view");
    EXPECT_EQ(g.value[4], '\0'); // copied: libpq reads text up to the NUL
    EXPECT_EQ(encode(std::optional<std::int16_t>{}, h), "<null>");
    EXPECT_EQ(h.type, int2); // a NULL keeps the type and format a value would have
    EXPECT_EQ(h.format, 1);
    pgco::bytes blob{std::byte{0}, std::byte{0xff}};
    EXPECT_EQ(encode(blob, i).size(), 2u);
    EXPECT_EQ(i.format, 1);
    EXPECT_EQ(i.type, bytea);

    param_slot nul;
    EXPECT_FALSE(pgco::detail::encode_param(std::string("a\0b", 3), nul));
}

// ---- binary results -------------------------------------------------------------------------

namespace {

/// Decodes `bytes` as the binary form of a column of type `t`.
template <class T>
std::optional<T> decode_bin(const std::string& bytes, pgco::oid t)
{
    T out{};
    if (!value_traits<T>::decode_binary(bytes, t, out))
        return std::nullopt;
    return out;
}

/// The network-order bytes of an integer.
template <class U>
std::string be(U v)
{
    std::string s(sizeof(U), '\0');
    pgco::detail::store_be(v, s.data());
    return s;
}

std::string be16(std::int16_t v)
{
    return be(static_cast<std::uint16_t>(v));
}
std::string be32(std::int32_t v)
{
    return be(static_cast<std::uint32_t>(v));
}
std::string be64(std::int64_t v)
{
    return be(static_cast<std::uint64_t>(v));
}
std::string bef4(float v)
{
    return be(std::bit_cast<std::uint32_t>(v));
}
std::string bef8(double v)
{
    return be(std::bit_cast<std::uint64_t>(v));
}

constexpr std::int64_t i64_min = std::numeric_limits<std::int64_t>::min();
constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();

pgco::timestamp ts_us(std::int64_t unix_us)
{
    return pgco::timestamp(std::chrono::microseconds(unix_us));
}

} // namespace

TEST(decode_binary, integers_by_width_with_range_checks)
{
    using namespace pgco::oids;
    EXPECT_EQ(decode_bin<std::int16_t>(be16(-32768), int2), -32768);
    EXPECT_EQ(decode_bin<std::int32_t>(be32(std::numeric_limits<std::int32_t>::min()), int4),
              std::numeric_limits<std::int32_t>::min());
    EXPECT_EQ(decode_bin<std::int64_t>(be64(i64_min), int8), i64_min);
    EXPECT_EQ(decode_bin<std::int64_t>(be64(i64_max), int8), i64_max);
    EXPECT_EQ(decode_bin<std::int64_t>(be16(-2), int2), -2); // widened with its sign
    EXPECT_EQ(decode_bin<std::int64_t>(be32(-3), int4), -3);
    // Out of the C++ type's range fails, as the text path does.
    EXPECT_EQ(decode_bin<std::int32_t>(be64(std::int64_t{1} << 31), int8), std::nullopt);
    EXPECT_EQ(decode_bin<std::int32_t>(be64(i64_min), int8), std::nullopt);
    EXPECT_EQ(decode_bin<std::int32_t>(be64(-(std::int64_t{1} << 31)), int8),
              std::numeric_limits<std::int32_t>::min());
    EXPECT_EQ(decode_bin<std::int16_t>(be32(32768), int4), std::nullopt);
    EXPECT_EQ(decode_bin<std::uint32_t>(be32(-1), int4), std::nullopt);
    EXPECT_EQ(decode_bin<std::uint16_t>(be16(-1), int2), std::nullopt);
    EXPECT_EQ(decode_bin<std::uint64_t>(be64(i64_max), int8), static_cast<std::uint64_t>(i64_max));
    // oid is unsigned on the wire.
    EXPECT_EQ(decode_bin<std::uint32_t>(be32(-1), oid_), 4294967295u);
    EXPECT_EQ(decode_bin<std::int64_t>(be32(-1), oid_), 4294967295);
    EXPECT_EQ(decode_bin<std::int32_t>(be32(-1), oid_), std::nullopt);
    // Wrong lengths, and types whose binary form is not read.
    EXPECT_EQ(decode_bin<std::int32_t>(be16(1), int4), std::nullopt);
    EXPECT_EQ(decode_bin<std::int32_t>(be32(1), int8), std::nullopt);
    EXPECT_EQ(decode_bin<std::int64_t>(std::string(), int8), std::nullopt);
    EXPECT_EQ(decode_bin<std::int64_t>(be64(1), numeric), std::nullopt);
}

TEST(decode_binary, floating_point_specials_and_widths)
{
    using namespace pgco::oids;
    constexpr double inf = std::numeric_limits<double>::infinity();
    EXPECT_EQ(decode_bin<double>(bef8(0.1), float8), 0.1);
    EXPECT_EQ(decode_bin<double>(bef8(-inf), float8), -inf);
    EXPECT_EQ(decode_bin<double>(bef8(inf), float8), inf);
    EXPECT_TRUE(std::isnan(*decode_bin<double>(bef8(std::nan("")), float8)));
    EXPECT_TRUE(std::isnan(*decode_bin<float>(bef4(std::nanf("")), float4)));
    EXPECT_TRUE(std::signbit(*decode_bin<double>(bef8(-0.0), float8)));
    EXPECT_EQ(decode_bin<double>(bef8(4.9e-324), float8), 4.9e-324); // subnormal
    EXPECT_EQ(decode_bin<float>(bef4(3.25f), float4), 3.25f);
    // Across widths the value is the one the text form gives: a real 0.1 is the double 0.1.
    EXPECT_EQ(decode_bin<double>(bef4(0.1f), float4), 0.1);
    EXPECT_EQ(decode_bin<double>(bef4(-std::numeric_limits<float>::infinity()), float4), -inf);
    EXPECT_EQ(decode_bin<float>(bef8(0.1), float8), 0.1f);
    EXPECT_EQ(decode_bin<float>(bef8(1e300), float8), std::nullopt); // out of float's range
    EXPECT_EQ(decode<float>("1e+300"), std::nullopt);                // as in text
    EXPECT_EQ(decode_bin<float>(bef8(inf), float8), std::numeric_limits<float>::infinity());
    // Integer columns.
    EXPECT_EQ(decode_bin<double>(be64(i64_min), int8), -9223372036854775808.0);
    EXPECT_EQ(decode_bin<double>(be64((std::int64_t{1} << 53) + 1), int8),
              *decode<double>("9007199254740993")); // rounded the same way as the text
    EXPECT_EQ(decode_bin<float>(be32(16777217), int4), *decode<float>("16777217"));
    EXPECT_EQ(decode_bin<double>(be32(-1), oid_), 4294967295.0);
    // Wrong lengths.
    EXPECT_EQ(decode_bin<double>(bef4(1.0f), float8), std::nullopt);
    EXPECT_EQ(decode_bin<float>(bef8(1.0), float4), std::nullopt);
    EXPECT_EQ(decode_bin<double>(be64(1), numeric), std::nullopt);
}

TEST(decode_binary, bool_bytea_text_and_uuid)
{
    using namespace pgco::oids;
    using namespace std::string_literals;
    EXPECT_EQ(decode_bin<bool>("\x01", bool_), true);
    EXPECT_EQ(decode_bin<bool>("\0"s, bool_), false);
    EXPECT_EQ(decode_bin<bool>("\x02", bool_), std::nullopt);
    EXPECT_EQ(decode_bin<bool>("\x01\x00"s, bool_), std::nullopt);
    EXPECT_EQ(decode_bin<bool>(""s, bool_), std::nullopt);

    EXPECT_EQ(decode_bin<pgco::bytes>("\0\xff"s, bytea),
              (pgco::bytes{std::byte{0}, std::byte{0xff}}));
    EXPECT_EQ(decode_bin<pgco::bytes>(""s, bytea), pgco::bytes{});

    EXPECT_EQ(decode_bin<std::string>("caf\xc3\xa9", text), "caf\xc3\xa9");
    EXPECT_EQ(decode_bin<std::string>("ab  ", bpchar), "ab  ");
    EXPECT_EQ(decode_bin<std::string>("x", varchar), "x");
    EXPECT_EQ(decode_bin<std::string>("pg_class", name), "pg_class");

    const std::string raw = "\x12\x34\x56\x78\x9a\xbc\xde\xf0\x01\x23\x45\x67\x89\xab\xcd\xef";
    const auto u = decode_bin<pgco::uuid>(raw, uuid);
    ASSERT_TRUE(u);
    EXPECT_EQ(pgco::to_string(*u), "12345678-9abc-def0-0123-456789abcdef");
    EXPECT_EQ(decode<pgco::uuid>("12345678-9ABC-def0-0123-456789abcdef"), u);
    EXPECT_EQ(decode<pgco::uuid>("12345678-9abc-def0-0123-456789abcde"), std::nullopt);
    EXPECT_EQ(decode<pgco::uuid>("123456789abcdef00123456789abcdef"), std::nullopt);
    EXPECT_EQ(decode<pgco::uuid>("12345678-9abc-def0-0123-456789abcdeg"), std::nullopt);
    EXPECT_EQ(decode_bin<pgco::uuid>(raw.substr(1), uuid), std::nullopt);
    EXPECT_EQ(decode_bin<std::string>(raw, uuid), "12345678-9abc-def0-0123-456789abcdef");
}

TEST(decode_binary, timestamps_dates_and_infinity)
{
    using namespace pgco::oids;
    using namespace std::chrono;
    constexpr std::int64_t epoch_2000_us = 946'684'800'000'000;
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(0), timestamp), ts_us(epoch_2000_us));
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(0), timestamptz), ts_us(epoch_2000_us));
    // Before 2000 and before 1970: negative counts.
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(-1), timestamp), ts_us(epoch_2000_us - 1));
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(-epoch_2000_us - 1), timestamp), ts_us(-1));
    // infinity and -infinity are the largest and smallest time points.
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(i64_max), timestamp), pgco::timestamp::max());
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(i64_min), timestamptz), pgco::timestamp::min());
    EXPECT_EQ(decode<pgco::timestamp>("infinity"), pgco::timestamp::max());
    EXPECT_EQ(decode<pgco::timestamp>("-infinity"), pgco::timestamp::min());
    // 294276-12-31 lies beyond sys_time<microseconds>: invalid in both forms.
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(9223371331200000000 - 1), timestamp), std::nullopt);
    EXPECT_EQ(decode<pgco::timestamp>("294276-12-31 23:59:59.999999"), std::nullopt);
    EXPECT_EQ(decode_bin<pgco::timestamp>(be32(0), timestamp), std::nullopt); // wrong length
    EXPECT_EQ(decode_bin<pgco::timestamp>(be64(0), date), std::nullopt);

    EXPECT_EQ(decode_bin<pgco::date>(be32(0), date), sys_days(2000y / 1 / 1));
    EXPECT_EQ(decode_bin<pgco::date>(be32(-1), date), sys_days(1999y / 12 / 31));
    EXPECT_EQ(decode_bin<pgco::date>(be32(std::numeric_limits<std::int32_t>::max()), date),
              pgco::date::max());
    EXPECT_EQ(decode_bin<pgco::date>(be32(std::numeric_limits<std::int32_t>::min()), date),
              pgco::date::min());
    EXPECT_EQ(decode_bin<pgco::date>(be64(0), date), std::nullopt);

    // As text, in the form the server prints.
    EXPECT_EQ(decode_bin<std::string>(be64(0), timestamp), "2000-01-01 00:00:00");
    EXPECT_EQ(decode_bin<std::string>(be64(-1), timestamptz), "1999-12-31 23:59:59.999999+00");
    EXPECT_EQ(decode_bin<std::string>(be64(500'000), timestamp), "2000-01-01 00:00:00.5");
    EXPECT_EQ(decode_bin<std::string>(be64(i64_max), timestamp), "infinity");
    EXPECT_EQ(decode_bin<std::string>(be64(i64_min), timestamptz), "-infinity");
    EXPECT_EQ(decode_bin<std::string>(be32(0), date), "2000-01-01");
    EXPECT_EQ(decode_bin<std::string>(be32(std::numeric_limits<std::int32_t>::max()), date),
              "infinity");
}

TEST(decode, timestamps_dates_in_text)
{
    using namespace std::chrono;
    EXPECT_EQ(decode<pgco::timestamp>("2000-01-01 00:00:00"), ts_us(946'684'800'000'000));
    EXPECT_EQ(decode<pgco::timestamp>("1970-01-01 00:00:00.000001"), ts_us(1));
    EXPECT_EQ(decode<pgco::timestamp>("1969-12-31 23:59:59.5"), ts_us(-500'000));
    EXPECT_EQ(decode<pgco::timestamp>("1970-01-01 05:30:00+05:30"), ts_us(0));
    EXPECT_EQ(decode<pgco::timestamp>("1969-12-31 16:00:00-08"), ts_us(0));
    EXPECT_EQ(decode<pgco::timestamp>("1970-01-01 00:19:32+00:19:32"), ts_us(0));
    EXPECT_EQ(decode<pgco::timestamp>("0001-01-01 00:00:00 BC"),
              sys_days(year(0) / 1 / 1) + microseconds(0));
    EXPECT_EQ(decode<pgco::timestamp>("2024-02-30 00:00:00"), std::nullopt);
    EXPECT_EQ(decode<pgco::timestamp>("2024-02-29 24:00:00"), std::nullopt);
    EXPECT_EQ(decode<pgco::timestamp>("2024-02-29"), std::nullopt);
    EXPECT_EQ(decode<pgco::timestamp>("Thu Feb 29 00:00:00 2024"), std::nullopt); // not ISO
    EXPECT_EQ(decode<pgco::timestamp>("2024-02-29 00:00:00+"), std::nullopt);

    EXPECT_EQ(decode<pgco::date>("2024-02-29"), sys_days(2024y / 2 / 29));
    EXPECT_EQ(decode<pgco::date>("0044-03-15 BC"), sys_days(year(-43) / 3 / 15));
    EXPECT_EQ(decode<pgco::date>("5874897-12-31"),
              sys_days(days(pgco::detail::days_from_civil(5874897, 12, 31))));
    EXPECT_EQ(decode<pgco::date>("infinity"), pgco::date::max());
    EXPECT_EQ(decode<pgco::date>("2023-02-29"), std::nullopt);
    EXPECT_EQ(decode<pgco::date>("0000-01-01 BC"), std::nullopt);
    EXPECT_EQ(decode<pgco::date>("24-01-01"), std::nullopt);
}

TEST(decode_binary, strings_read_numbers_as_the_server_prints_them)
{
    using namespace pgco::oids;
    EXPECT_EQ(decode_bin<std::string>(be16(-32768), int2), "-32768");
    EXPECT_EQ(decode_bin<std::string>(be64(i64_min), int8), "-9223372036854775808");
    EXPECT_EQ(decode_bin<std::string>(be32(-1), oid_), "4294967295");
    EXPECT_EQ(decode_bin<std::string>("\x01", bool_), "t");
    EXPECT_EQ(decode_bin<std::string>(std::string("\0\xff", 2), bytea), "\\x00ff");
    // Fixed notation for decimal exponents -4 to 14 (float4: 5), as PostgreSQL 12+ prints.
    EXPECT_EQ(decode_bin<std::string>(bef8(1234567890123456.0), float8), "1.234567890123456e+15");
    EXPECT_EQ(decode_bin<std::string>(bef8(123456789012345.0), float8), "123456789012345");
    EXPECT_EQ(decode_bin<std::string>(bef8(0.0001), float8), "0.0001");
    EXPECT_EQ(decode_bin<std::string>(bef8(0.00001), float8), "1e-05");
    EXPECT_EQ(decode_bin<std::string>(bef8(1e300), float8), "1e+300");
    EXPECT_EQ(decode_bin<std::string>(bef8(-0.0), float8), "-0");
    EXPECT_EQ(decode_bin<std::string>(bef8(std::numeric_limits<double>::infinity()), float8),
              "Infinity");
    EXPECT_EQ(decode_bin<std::string>(bef8(std::nan("")), float8), "NaN");
    EXPECT_EQ(decode_bin<std::string>(bef4(123456.0f), float4), "123456");
    EXPECT_EQ(decode_bin<std::string>(bef4(1234567.0f), float4), "1.234567e+06");
    EXPECT_EQ(decode_bin<std::string>(bef4(0.1f), float4), "0.1");
    EXPECT_EQ(decode_bin<std::string>(be64(1), numeric), std::nullopt); // not read in binary
}

TEST(decode_binary, safe_column_types)
{
    using namespace pgco::oids;
    using pgco::detail::binary_result_safe;
    for (pgco::oid t : {bool_, bytea, name, int8, int2, int4, text, oid_, float4, float8, bpchar,
                        varchar, date, timestamp, timestamptz, uuid})
        EXPECT_TRUE(binary_result_safe(t)) << t;
    for (pgco::oid t : {char_, json, jsonb, numeric, unknown, pgco::oid{1186} /* interval */,
                        pgco::oid{1007} /* int4[] */})
        EXPECT_FALSE(binary_result_safe(t)) << t;
}

TEST(encode, parameters_of_the_new_types)
{
    using namespace pgco::oids;
    using namespace std::chrono;
    param_slot a, b, c, d, e;
    pgco::uuid u;
    u.octets[0] = 0xab;
    u.octets[15] = 0x01;
    EXPECT_EQ(encode(u, a).size(), 16u);
    EXPECT_EQ(a.type, uuid);
    EXPECT_EQ(a.format, 1);
    EXPECT_EQ(encode(ts_us(-500'000), b), "1969-12-31 23:59:59.5+00");
    EXPECT_EQ(b.type, unspecified); // a timestamp or timestamptz column takes it as UTC
    EXPECT_EQ(encode(pgco::timestamp::max(), c), "infinity");
    EXPECT_EQ(encode(pgco::date(sys_days(year(-43) / 3 / 15)), d), "0044-03-15 BC");
    EXPECT_EQ(encode(std::uint64_t{18446744073709551615u}, e), "18446744073709551615");
    EXPECT_EQ(e.type, numeric);
    EXPECT_EQ(e.format, 0);
}

namespace {
struct point_row
{
    std::int64_t id;
    std::optional<std::string> name;
    double x;
};
} // namespace

TEST(decode_binary, row_types_that_read_binary_exactly)
{
    using namespace pgco::oids;
    using pgco::detail::binary_exact;
    using pgco::detail::binary_row_safe;
    EXPECT_TRUE(binary_exact<std::int32_t>(int8));
    EXPECT_TRUE(binary_exact<std::string>(int8));
    EXPECT_TRUE(binary_exact<std::optional<std::string>>(uuid));
    // The text of these depends on session settings.
    EXPECT_FALSE(binary_exact<std::string>(timestamptz));
    EXPECT_FALSE(binary_exact<std::optional<std::string>>(float8));
    EXPECT_FALSE(binary_exact<std::string>(bytea));
    EXPECT_TRUE(binary_exact<pgco::timestamp>(timestamptz));
    EXPECT_FALSE(binary_exact<double>(numeric));

    const pgco::oid good[] = {int8, text, float8};
    const pgco::oid numeric_x[] = {int8, text, numeric};
    const pgco::oid float_name[] = {int8, float8, float8};
    EXPECT_TRUE(binary_row_safe<point_row>(good, 3));
    EXPECT_FALSE(binary_row_safe<point_row>(numeric_x, 3));
    EXPECT_FALSE(binary_row_safe<point_row>(float_name, 3)); // a float read as std::string
    EXPECT_FALSE(binary_row_safe<point_row>(good, 2));
    EXPECT_TRUE(binary_row_safe<std::int64_t>(good, 1));
    EXPECT_FALSE(binary_row_safe<std::int64_t>(good, 3));
}
