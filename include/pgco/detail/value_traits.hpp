#pragma once

// How each supported C++ type travels to and from PostgreSQL: which column types it may be
// read from, how its text and binary forms are parsed, and how it is sent as a parameter.
//
// Every traits class has
//   accepts(oid)                    the column types it may be read from;
//   decode(text, out)               parses the text form;
//   decode_binary(bytes, oid, out)  parses the binary form of a column of that type, giving
//                                   the same value and the same failures as decode() on the
//                                   text the server would have sent instead;
//   encode(value, param_slot&)      fills a parameter.

#include <pgco/detail/binary.hpp>
#include <pgco/types.hpp>

#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace pgco::detail {

/// One bound parameter as libpq wants it. Numbers are written into `buf` (binary, in network
/// byte order, or as text); text that is not NUL-terminated is copied into `owned`, because
/// libpq reads text parameters up to the NUL.
struct param_slot
{
    const char* value = nullptr;
    int length = 0;
    int format = 0; // 0 text, 1 binary
    oid type = oids::unspecified;
    char buf[40]; // room for the longest text form below: a timestamp, 34 characters
    std::string owned;
};

template <class T>
struct value_traits; // not defined: T is not a single-column value

template <class T>
concept integer =
    std::integral<T> && !std::same_as<T, bool> && !std::same_as<T, char> &&
    !std::same_as<T, signed char> && !std::same_as<T, unsigned char> && !std::same_as<T, char8_t> &&
    !std::same_as<T, char16_t> && !std::same_as<T, char32_t> && !std::same_as<T, wchar_t>;

inline bool is_integer_column(oid t) noexcept
{
    return t == oids::int2 || t == oids::int4 || t == oids::int8 || t == oids::oid_ ||
           t == oids::numeric;
}

/// The value of a binary int2, int4, int8 or oid column; false for other types and for a
/// length that does not match the type.
inline bool decode_binary_integer(std::string_view s, oid t, std::int64_t& out) noexcept
{
    switch (t) {
    case oids::int2:
        if (s.size() != 2)
            return false;
        out = static_cast<std::int16_t>(load_be<std::uint16_t>(s.data()));
        return true;
    case oids::int4:
        if (s.size() != 4)
            return false;
        out = static_cast<std::int32_t>(load_be<std::uint32_t>(s.data()));
        return true;
    case oids::oid_: // unsigned on the wire and in its text form
        if (s.size() != 4)
            return false;
        out = load_be<std::uint32_t>(s.data());
        return true;
    case oids::int8:
        if (s.size() != 8)
            return false;
        out = static_cast<std::int64_t>(load_be<std::uint64_t>(s.data()));
        return true;
    default:
        return false;
    }
}

/// Writes `v` in network byte order into `p.buf` as a binary parameter of type `type`.
template <class U>
void encode_binary(U v, oid type, param_slot& p) noexcept
{
    store_be(v, p.buf);
    p.value = p.buf;
    p.length = sizeof(U);
    p.format = 1;
    p.type = type;
}

template <integer T>
struct value_traits<T>
{
    static constexpr const char* cpp_name = std::is_signed_v<T> ? (sizeof(T) == 2   ? "int16_t"
                                                                   : sizeof(T) == 4 ? "int32_t"
                                                                                    : "int64_t")
                                                                : (sizeof(T) == 2   ? "uint16_t"
                                                                   : sizeof(T) == 4 ? "uint32_t"
                                                                                    : "uint64_t");

    static bool accepts(oid t) noexcept { return is_integer_column(t); }

    static bool decode(std::string_view s, T& out) noexcept
    {
        auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
        return ec == std::errc{} && end == s.data() + s.size();
    }

    static bool decode_binary(std::string_view s, oid t, T& out) noexcept
    {
        std::int64_t v = 0;
        // Out of T's range fails, as from_chars does on the text form.
        if (!decode_binary_integer(s, t, v) || !std::in_range<T>(v))
            return false;
        out = static_cast<T>(v);
        return true;
    }

    static bool encode(const T& v, param_slot& p) noexcept
    {
        // Binary, typed by width; an unsigned value takes the next wider signed type, so it
        // always fits. The type depends on T alone: statements are cached by parameter types.
        if constexpr (std::is_signed_v<T> && sizeof(T) <= 2) {
            encode_binary(static_cast<std::uint16_t>(v), oids::int2, p);
        } else if constexpr ((std::is_signed_v<T> && sizeof(T) <= 4) || sizeof(T) <= 2) {
            encode_binary(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), oids::int4, p);
        } else if constexpr (std::is_signed_v<T> || sizeof(T) <= 4) {
            encode_binary(static_cast<std::uint64_t>(static_cast<std::int64_t>(v)), oids::int8, p);
        } else {
            // uint64_t may exceed bigint: numeric, whose binary form is not worth building.
            auto [end, ec] = std::to_chars(p.buf, p.buf + sizeof(p.buf) - 1, v);
            *end = '\0';
            p.value = p.buf;
            p.length = static_cast<int>(end - p.buf);
            p.type = oids::numeric;
            return ec == std::errc{};
        }
        return true;
    }
};

template <std::floating_point T>
struct value_traits<T>
{
    static constexpr const char* cpp_name = sizeof(T) == sizeof(float) ? "float" : "double";

    static bool accepts(oid t) noexcept
    {
        return t == oids::float4 || t == oids::float8 || is_integer_column(t);
    }

    static bool decode(std::string_view s, T& out) noexcept
    {
        // PostgreSQL spells the special values out; from_chars does not know these spellings.
        if (s == "NaN") {
            out = std::numeric_limits<T>::quiet_NaN();
            return true;
        }
        if (s == "Infinity" || s == "-Infinity") {
            out = s[0] == '-' ? -std::numeric_limits<T>::infinity()
                              : std::numeric_limits<T>::infinity();
            return true;
        }
        auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
        return ec == std::errc{} && end == s.data() + s.size();
    }

    static bool decode_binary(std::string_view s, oid t, T& out) noexcept
    {
        if (t == oids::float4 || t == oids::float8) {
            if (s.size() != (t == oids::float4 ? 4 : 8))
                return false;
            if constexpr (std::same_as<T, float>) {
                if (t == oids::float4) {
                    out = std::bit_cast<float>(load_be<std::uint32_t>(s.data()));
                    return true;
                }
            } else if constexpr (std::same_as<T, double>) {
                if (t == oids::float8) {
                    out = std::bit_cast<double>(load_be<std::uint64_t>(s.data()));
                    return true;
                }
            }
            // Across widths, go through the text the server would have sent: a real 0.1 reads
            // as the double 0.1 (not 0.100000001490116), a double too large for float fails.
            char text[64];
            std::to_chars_result r;
            if (t == oids::float4)
                r = to_text(std::bit_cast<float>(load_be<std::uint32_t>(s.data())), text);
            else
                r = to_text(std::bit_cast<double>(load_be<std::uint64_t>(s.data())), text);
            return r.ec == std::errc{} && decode(std::string_view(text, r.ptr), out);
        }
        std::int64_t v = 0;
        if (!decode_binary_integer(s, t, v))
            return false;
        out = static_cast<T>(v); // rounds to nearest, as from_chars does with the digits
        return true;
    }

    static bool encode(const T& v, param_slot& p) noexcept
    {
        if constexpr (std::same_as<T, float>) {
            encode_binary(std::bit_cast<std::uint32_t>(v), oids::float4, p);
        } else if constexpr (std::same_as<T, double>) {
            encode_binary(std::bit_cast<std::uint64_t>(v), oids::float8, p);
        } else {
            // long double: its shortest text, which the server rounds to a double.
            char text[64];
            auto r = to_text(v, text);
            if (r.ec != std::errc{} || r.ptr - text >= static_cast<std::ptrdiff_t>(sizeof(p.buf)))
                return false;
            std::memcpy(p.buf, text, static_cast<std::size_t>(r.ptr - text));
            p.buf[r.ptr - text] = '\0';
            p.value = p.buf;
            p.length = static_cast<int>(r.ptr - text);
            p.type = oids::float8;
        }
        return true;
    }

private:
    /// Shortest digits that read back to `v`, with the server's spellings of the specials.
    template <class F>
    static std::to_chars_result to_text(F v, char (&buf)[64]) noexcept
    {
        const char* special = std::isnan(v)    ? "NaN"
                              : !std::isinf(v) ? nullptr
                              : v < 0          ? "-Infinity"
                                               : "Infinity";
        if (special == nullptr)
            return std::to_chars(buf, buf + sizeof(buf), v);
        const std::size_t n = std::strlen(special);
        std::memcpy(buf, special, n);
        return {buf + n, std::errc{}};
    }
};

template <>
struct value_traits<bool>
{
    static constexpr const char* cpp_name = "bool";
    static bool accepts(oid t) noexcept { return t == oids::bool_; }
    static bool decode(std::string_view s, bool& out) noexcept
    {
        if (s == "t" || s == "f") {
            out = s[0] == 't';
            return true;
        }
        return false;
    }
    static bool decode_binary(std::string_view s, oid t, bool& out) noexcept
    {
        if (t != oids::bool_ || s.size() != 1 || (s[0] != 0 && s[0] != 1))
            return false;
        out = s[0] == 1;
        return true;
    }
    static bool encode(bool v, param_slot& p) noexcept
    {
        p.value = v ? "\1" : "\0";
        p.length = 1;
        p.format = 1;
        p.type = oids::bool_;
        return true;
    }
};

/// Text parameters travel untyped, so the server infers their type from the statement (a
/// string can fill a `date`, `jsonb` or `uuid` column), exactly as in psql.
inline bool encode_text(std::string_view s, param_slot& p, bool nul_terminated)
{
    if (std::memchr(s.data(), '\0', s.size()) != nullptr)
        return false; // libpq would silently cut the value at the NUL
    if (nul_terminated) {
        p.value = s.data();
    } else {
        p.owned.assign(s);
        p.value = p.owned.c_str();
    }
    p.length = static_cast<int>(s.size());
    p.type = oids::unspecified;
    return true;
}

template <>
struct value_traits<std::string>
{
    static constexpr const char* cpp_name = "std::string";
    // Every type has a text form; reading it as a string is always possible.
    static bool accepts(oid) noexcept { return true; }
    static bool decode(std::string_view s, std::string& out)
    {
        out.assign(s);
        return true;
    }

    /// Builds the text the server would have sent (see `binary_result_safe` for the settings
    /// it assumes); false for types whose binary form pgco does not read.
    static bool decode_binary(std::string_view s, oid t, std::string& out)
    {
        switch (t) {
        case oids::text:
        case oids::varchar:
        case oids::bpchar:
        case oids::name:
            out.assign(s); // the binary form of text is the text
            return true;
        case oids::int2:
        case oids::int4:
        case oids::int8:
        case oids::oid_: {
            std::int64_t v = 0;
            if (!decode_binary_integer(s, t, v))
                return false;
            char buf[24];
            out.assign(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
            return true;
        }
        case oids::float4:
        case oids::float8:
            if (s.size() != (t == oids::float4 ? 4u : 8u))
                return false;
            out.clear();
            if (t == oids::float4)
                append_pg_float(out, std::bit_cast<float>(load_be<std::uint32_t>(s.data())));
            else
                append_pg_float(out, std::bit_cast<double>(load_be<std::uint64_t>(s.data())));
            return true;
        case oids::bool_: {
            bool b = false;
            if (!value_traits<bool>::decode_binary(s, t, b))
                return false;
            out.assign(b ? "t" : "f");
            return true;
        }
        case oids::bytea: {
            static constexpr char hex[] = "0123456789abcdef";
            out.assign("\\x");
            out.reserve(2 + 2 * s.size());
            for (unsigned char ch : s) {
                out += hex[ch >> 4];
                out += hex[ch & 0xf];
            }
            return true;
        }
        case oids::uuid:
            if (s.size() != 16)
                return false;
            out.clear();
            append_uuid(out, reinterpret_cast<const unsigned char*>(s.data()));
            return true;
        case oids::date:
            if (s.size() != 4)
                return false;
            out = format_pg_date(static_cast<std::int32_t>(load_be<std::uint32_t>(s.data())));
            return true;
        case oids::timestamp:
        case oids::timestamptz:
            if (s.size() != 8)
                return false;
            out = format_pg_timestamp(static_cast<std::int64_t>(load_be<std::uint64_t>(s.data())),
                                      t == oids::timestamptz);
            return true;
        default:
            return false;
        }
    }

    static bool encode(const std::string& v, param_slot& p) { return encode_text(v, p, true); }
};

template <>
struct value_traits<bytes>
{
    static constexpr const char* cpp_name = "pgco::bytes";
    static bool accepts(oid t) noexcept { return t == oids::bytea; }

    static bool decode_binary(std::string_view s, oid t, bytes& out)
    {
        if (t != oids::bytea)
            return false;
        const auto* first = reinterpret_cast<const std::byte*>(s.data());
        out.assign(first, first + s.size());
        return true;
    }

    static bool decode(std::string_view s, bytes& out)
    {
        // The hex format (`\x0a1b...`), the server default since 9.0.
        if (s.size() < 2 || s[0] != '\\' || s[1] != 'x' || s.size() % 2 != 0)
            return false;
        out.resize((s.size() - 2) / 2);
        for (std::size_t i = 0; i < out.size(); ++i) {
            unsigned v = 0;
            auto first = s.data() + 2 + 2 * i;
            auto [end, ec] = std::from_chars(first, first + 2, v, 16);
            if (ec != std::errc{} || end != first + 2)
                return false;
            out[i] = static_cast<std::byte>(v);
        }
        return true;
    }

    static bool encode(const bytes& v, param_slot& p) noexcept
    {
        // Binary format: the bytes as they are, no escaping and no NUL problem.
        // An empty vector's data() may be null, which libpq would read as SQL NULL.
        p.value = v.empty() ? "" : reinterpret_cast<const char*>(v.data());
        p.length = static_cast<int>(v.size());
        p.format = 1;
        p.type = oids::bytea;
        return true;
    }
};

template <>
struct value_traits<timestamp>
{
    static constexpr const char* cpp_name = "pgco::timestamp";
    static bool accepts(oid t) noexcept { return t == oids::timestamp || t == oids::timestamptz; }
    static bool decode(std::string_view s, timestamp& out) noexcept
    {
        return parse_pg_timestamp(s, out);
    }
    static bool decode_binary(std::string_view s, oid t, timestamp& out) noexcept
    {
        if (!accepts(t) || s.size() != 8)
            return false;
        return timestamp_from_pg(static_cast<std::int64_t>(load_be<std::uint64_t>(s.data())), out);
    }
    static bool encode(const timestamp& v, param_slot& p)
    {
        // Untyped text in UTC: a timestamptz column takes it as that instant, a timestamp
        // column ignores the "+00" and stores the UTC wall-clock time, as it was read.
        std::string text;
        if (v == timestamp::max() || v == timestamp::min()) {
            text = v == timestamp::max() ? "infinity" : "-infinity";
        } else {
            const std::int64_t us = v.time_since_epoch().count();
            // The conversion to 2000-based time cannot overflow for any value readable back.
            if (us < std::numeric_limits<std::int64_t>::min() + pg_epoch_us)
                return false;
            text = format_pg_timestamp(us - pg_epoch_us, true);
        }
        std::memcpy(p.buf, text.c_str(), text.size() + 1);
        return encode_text(std::string_view(p.buf, text.size()), p, true);
    }
};

template <>
struct value_traits<date>
{
    static constexpr const char* cpp_name = "pgco::date";
    static bool accepts(oid t) noexcept { return t == oids::date; }
    static bool decode(std::string_view s, date& out) noexcept { return parse_pg_date(s, out); }
    static bool decode_binary(std::string_view s, oid t, date& out) noexcept
    {
        if (t != oids::date || s.size() != 4)
            return false;
        const auto d = static_cast<std::int32_t>(load_be<std::uint32_t>(s.data()));
        if (d == std::numeric_limits<std::int32_t>::max() ||
            d == std::numeric_limits<std::int32_t>::min())
            out = d > 0 ? date::max() : date::min();
        else
            out = date(std::chrono::days(d + pg_epoch_days));
        return true;
    }
    static bool encode(const date& v, param_slot& p)
    {
        // Untyped text, like strings: the server reads it as a date where one is expected.
        std::string text;
        const auto days = v.time_since_epoch().count();
        if (v == date::max() || v == date::min())
            text = v == date::max() ? "infinity" : "-infinity";
        else if (days - pg_epoch_days < std::numeric_limits<std::int32_t>::min() ||
                 days - pg_epoch_days > std::numeric_limits<std::int32_t>::max())
            return false;
        else
            text = format_pg_date(static_cast<std::int32_t>(days - pg_epoch_days));
        std::memcpy(p.buf, text.c_str(), text.size() + 1);
        return encode_text(std::string_view(p.buf, text.size()), p, true);
    }
};

template <>
struct value_traits<uuid>
{
    static constexpr const char* cpp_name = "pgco::uuid";
    static bool accepts(oid t) noexcept { return t == oids::uuid; }
    static bool decode(std::string_view s, uuid& out) noexcept
    {
        return parse_uuid(s, out.octets.data());
    }
    static bool decode_binary(std::string_view s, oid t, uuid& out) noexcept
    {
        if (t != oids::uuid || s.size() != 16)
            return false;
        std::memcpy(out.octets.data(), s.data(), 16);
        return true;
    }
    static bool encode(const uuid& v, param_slot& p) noexcept
    {
        // Binary and typed: uuid is the only type it can be.
        std::memcpy(p.buf, v.octets.data(), 16);
        p.value = p.buf;
        p.length = 16;
        p.format = 1;
        p.type = oids::uuid;
        return true;
    }
};

template <class T>
struct value_traits<std::optional<T>>
{
    static constexpr const char* cpp_name = value_traits<T>::cpp_name;
    static bool accepts(oid t) noexcept { return value_traits<T>::accepts(t); }
    static bool encode(const std::optional<T>& v, param_slot& p)
    {
        if (v)
            return value_traits<T>::encode(*v, p);
        param_slot typed; // learn the type a present value would have
        value_traits<T>::encode(T{}, typed);
        p.type = typed.type;
        p.format = typed.format;
        p.value = nullptr;
        return true;
    }
};

template <class T>
struct is_optional : std::false_type
{};
template <class T>
struct is_optional<std::optional<T>> : std::true_type
{};

/// True for types read from exactly one column (as opposed to aggregates mapped field by field).
template <class T>
concept column_value = requires
{
    value_traits<T>::cpp_name;
};

/// True if a column of type `t` read as `T` gives the same in binary as in text whatever the
/// session's settings. Stricter than `binary_result_safe` only for `std::string`, whose text
/// of a float, date, timestamp or bytea depends on extra_float_digits, DateStyle, TimeZone and
/// bytea_output.
template <class T>
bool binary_exact(oid t) noexcept
{
    if constexpr (is_optional<T>::value) {
        return binary_exact<typename T::value_type>(t);
    } else if constexpr (std::same_as<T, std::string>) {
        return binary_result_safe(t) && t != oids::float4 && t != oids::float8 && t != oids::date &&
               t != oids::timestamp && t != oids::timestamptz && t != oids::bytea;
    } else {
        return binary_result_safe(t);
    }
}

/// Fills `p` from one parameter; false if the value cannot be sent.
template <class T>
bool encode_param(const T& v, param_slot& p)
{
    if constexpr (std::is_convertible_v<const T&, std::string_view> &&
                  !std::same_as<T, std::string>) {
        // string literals, const char*, std::string_view: NUL-terminated only when a C string
        if constexpr (std::is_array_v<T> || std::is_pointer_v<std::decay_t<T>>) {
            if (std::is_pointer_v<T> && v == nullptr) {
                p.value = nullptr; // a null `const char*` means SQL NULL
                return true;
            }
            return encode_text(std::string_view(v), p, true);
        } else {
            return encode_text(std::string_view(v), p, false);
        }
    } else if constexpr (std::same_as<T, std::nullopt_t>) {
        p.value = nullptr;
        return true;
    } else {
        static_assert(column_value<T>, "pgco: unsupported parameter type");
        return value_traits<T>::encode(v, p);
    }
}

} // namespace pgco::detail
