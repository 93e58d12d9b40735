// Decoding and encoding of single values, without a server.

#include <pgco/detail/value_traits.hpp>
#include <pgco/types.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

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
    param_slot a, b, c, d, e, f, g, h, i;
    EXPECT_EQ(encode(std::int32_t{-7}, a), "-7");
    EXPECT_EQ(a.type, int4);
    EXPECT_EQ(encode(std::int64_t{1} << 40, b), "1099511627776");
    EXPECT_EQ(b.type, int8);
    EXPECT_EQ(encode(0.1, c), "0.1");
    EXPECT_EQ(c.type, float8);
    EXPECT_EQ(encode(-std::numeric_limits<double>::infinity(), d), "-Infinity");
    EXPECT_EQ(encode(true, e), "t");
    EXPECT_EQ(e.type, bool_);
    EXPECT_EQ(encode("literal", f), "literal");
    EXPECT_EQ(f.type, unspecified); // the server infers text parameters' types
    std::string_view view = "view-and-more";
    EXPECT_EQ(encode(view.substr(0, 4), g), "view");
    EXPECT_EQ(g.value[4], '\0'); // copied: libpq reads text up to the NUL
    EXPECT_EQ(encode(std::optional<std::int16_t>{}, h), "<null>");
    EXPECT_EQ(h.type, int2);
    pgco::bytes blob{std::byte{0}, std::byte{0xff}};
    EXPECT_EQ(encode(blob, i).size(), 2u);
    EXPECT_EQ(i.format, 1);
    EXPECT_EQ(i.type, bytea);

    param_slot nul;
    EXPECT_FALSE(pgco::detail::encode_param(std::string("a\0b", 3), nul));
}
