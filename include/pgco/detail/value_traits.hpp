#pragma once

// How each supported C++ type travels to and from PostgreSQL: which column types it may be
// read from, how its text form is parsed, and how it is sent as a parameter.

#include <pgco/types.hpp>

#include <charconv>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace pgco::detail {

/// One bound parameter as libpq wants it. Numbers are formatted into `buf`; text that is not
/// NUL-terminated is copied into `owned`, because libpq reads text parameters up to the NUL.
struct param_slot
{
    const char* value = nullptr;
    int length = 0;
    int format = 0; // 0 text, 1 binary
    oid type = oids::unspecified;
    char buf[32];
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

    static bool encode(const T& v, param_slot& p) noexcept
    {
        auto [end, ec] = std::to_chars(p.buf, p.buf + sizeof(p.buf) - 1, v);
        *end = '\0';
        p.value = p.buf;
        p.length = static_cast<int>(end - p.buf);
        if constexpr (std::is_signed_v<T>)
            p.type = sizeof(T) <= 2 ? oids::int2 : sizeof(T) <= 4 ? oids::int4 : oids::int8;
        else
            p.type = sizeof(T) <= 2 ? oids::int4 : sizeof(T) <= 4 ? oids::int8 : oids::numeric;
        return ec == std::errc{};
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

    static bool encode(const T& v, param_slot& p) noexcept
    {
        p.type = sizeof(T) == sizeof(float) ? oids::float4 : oids::float8;
        p.value = p.buf;
        if (std::isnan(v)) {
            std::memcpy(p.buf, "NaN", 4);
        } else if (std::isinf(v)) {
            std::memcpy(p.buf, v < 0 ? "-Infinity" : "Infinity", v < 0 ? 10 : 9);
        } else {
            // Shortest representation that reads back to the same value.
            auto [end, ec] = std::to_chars(p.buf, p.buf + sizeof(p.buf) - 1, v);
            if (ec != std::errc{})
                return false;
            *end = '\0';
        }
        p.length = static_cast<int>(std::strlen(p.buf));
        return true;
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
    static bool encode(bool v, param_slot& p) noexcept
    {
        p.value = v ? "t" : "f";
        p.length = 1;
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
    static bool encode(const std::string& v, param_slot& p) { return encode_text(v, p, true); }
};

template <>
struct value_traits<bytes>
{
    static constexpr const char* cpp_name = "pgco::bytes";
    static bool accepts(oid t) noexcept { return t == oids::bytea; }

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
