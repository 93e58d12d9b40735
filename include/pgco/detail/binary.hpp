#pragma once

// PostgreSQL's binary wire formats of the fixed-width types, and the text forms the server
// prints for them, shared by the decoders in value_traits.hpp.

#include <pgco/types.hpp>

#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace pgco::detail {

/// True for column types whose binary form every C++ type accepting them decodes exactly as it
/// would decode their text form. The connection asks for binary results only when every column
/// of a statement is of such a type. Caveat for `std::string` (which accepts every type): the
/// text it builds from a binary value is what the server prints with its default settings
/// (DateStyle ISO, extra_float_digits 1, bytea_output hex) and shows `timestamptz` in UTC.
inline bool binary_result_safe(oid t) noexcept
{
    switch (t) {
    case oids::bool_:
    case oids::bytea:
    case oids::name:
    case oids::int8:
    case oids::int2:
    case oids::int4:
    case oids::text:
    case oids::oid_:
    case oids::float4:
    case oids::float8:
    case oids::bpchar:
    case oids::varchar:
    case oids::date:
    case oids::timestamp:
    case oids::timestamptz:
    case oids::uuid:
        return true;
    default:
        return false;
    }
}

/// `v` with its bytes in network order (or back); std::byteswap is C++23.
template <class U>
constexpr U to_from_network(U v) noexcept
{
    static_assert(std::is_unsigned_v<U>);
    if constexpr (std::endian::native == std::endian::big || sizeof(U) == 1)
        return v;
    else if constexpr (sizeof(U) == 2)
        return __builtin_bswap16(v);
    else if constexpr (sizeof(U) == 4)
        return __builtin_bswap32(v);
    else
        return __builtin_bswap64(v);
}

/// Reads an unsigned integer stored in network byte order from sizeof(U) bytes at `s`.
template <class U>
U load_be(const char* s) noexcept
{
    U v;
    std::memcpy(&v, s, sizeof(U));
    return to_from_network(v);
}

/// Writes `v` in network byte order to sizeof(U) bytes at `out`.
template <class U>
void store_be(U v, char* out) noexcept
{
    v = to_from_network(v);
    std::memcpy(out, &v, sizeof(U));
}

/// Days and microseconds between 1970-01-01 (the Unix and std::chrono epoch) and 2000-01-01
/// (PostgreSQL's epoch for `date` and `timestamp`).
inline constexpr std::int64_t pg_epoch_days = 10957;
inline constexpr std::int64_t pg_epoch_us = pg_epoch_days * 86'400'000'000;

/// Days since 1970-01-01 of a proleptic Gregorian date (year 0 = 1 BC). H. Hinnant's algorithm,
/// on 64 bits: PostgreSQL dates reach year 5874897, beyond std::chrono::year.
constexpr std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept
{
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct civil_date
{
    std::int64_t year; // 0 = 1 BC
    unsigned month;
    unsigned day;
};

constexpr civil_date civil_from_days(std::int64_t z) noexcept
{
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    return {static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2), m, d};
}

/// Appends `v` with at least `width` digits.
inline void append_padded(std::string& out, std::uint64_t v, int width)
{
    char digits[24];
    auto end = std::to_chars(digits, digits + sizeof(digits), v).ptr;
    for (auto n = static_cast<int>(end - digits); n < width; ++n)
        out += '0';
    out.append(digits, end);
}

/// "YYYY-MM-DD" as the server prints a date with DateStyle ISO (" BC" is appended by callers).
inline void append_iso_date(std::string& out, const civil_date& d)
{
    // Year 0 is 1 BC: the server counts BC years from 1.
    append_padded(out, static_cast<std::uint64_t>(d.year > 0 ? d.year : 1 - d.year), 4);
    out += '-';
    append_padded(out, d.month, 2);
    out += '-';
    append_padded(out, d.day, 2);
}

/// The text of a binary `date` (days since 2000-01-01), as the server prints it (DateStyle ISO).
inline std::string format_pg_date(std::int32_t pg_days)
{
    if (pg_days == std::numeric_limits<std::int32_t>::max())
        return "infinity";
    if (pg_days == std::numeric_limits<std::int32_t>::min())
        return "-infinity";
    std::string out;
    const civil_date d = civil_from_days(pg_days + pg_epoch_days);
    append_iso_date(out, d);
    if (d.year <= 0)
        out += " BC";
    return out;
}

/// The text of a binary `timestamp` (microseconds since 2000-01-01), as the server prints it
/// with DateStyle ISO; `with_utc_offset` adds "+00", the form of a `timestamptz` in UTC.
inline std::string format_pg_timestamp(std::int64_t pg_us, bool with_utc_offset)
{
    if (pg_us == std::numeric_limits<std::int64_t>::max())
        return "infinity";
    if (pg_us == std::numeric_limits<std::int64_t>::min())
        return "-infinity";
    constexpr std::int64_t us_per_day = 86'400'000'000;
    // Floor division: times before 2000 count back from the previous midnight.
    std::int64_t days = pg_us / us_per_day;
    std::int64_t us = pg_us % us_per_day;
    if (us < 0) {
        us += us_per_day;
        --days;
    }
    std::string out;
    const civil_date d = civil_from_days(days + pg_epoch_days);
    append_iso_date(out, d);
    out += ' ';
    const auto secs = static_cast<std::uint64_t>(us / 1'000'000);
    append_padded(out, secs / 3600, 2);
    out += ':';
    append_padded(out, secs / 60 % 60, 2);
    out += ':';
    append_padded(out, secs % 60, 2);
    if (auto frac = static_cast<std::uint64_t>(us % 1'000'000); frac != 0) {
        // The server trims trailing zeros of the fraction.
        int width = 6;
        while (frac % 10 == 0) {
            frac /= 10;
            --width;
        }
        out += '.';
        append_padded(out, frac, width);
    }
    if (with_utc_offset)
        out += "+00";
    if (d.year <= 0)
        out += " BC";
    return out;
}

/// Appends a float or double as the server prints it with extra_float_digits >= 1 (the default
/// since PostgreSQL 12): the shortest digits that read back to the same value, in fixed
/// notation for decimal exponents from -4 up to 14 (float4: 5), otherwise like "1.5e+15".
template <class T>
void append_pg_float(std::string& out, T v)
{
    static_assert(std::is_floating_point_v<T>);
    if (std::isnan(v)) {
        out += "NaN";
        return;
    }
    if (std::isinf(v)) {
        out += v < 0 ? "-Infinity" : "Infinity";
        return;
    }
    char buf[64];
    auto sci = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific).ptr;
    const char* e = buf;
    while (*e != 'e')
        ++e;
    int exponent = 0;
    std::from_chars(e + (e[1] == '+' ? 2 : 1), sci, exponent);
    constexpr int fixed_limit = sizeof(T) == sizeof(float) ? 6 : 15;
    if (exponent >= -4 && exponent < fixed_limit) {
        auto fixed = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed).ptr;
        out.append(buf, fixed);
    } else {
        out.append(buf, sci);
    }
}

/// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in lowercase, as the server prints a uuid.
inline void append_uuid(std::string& out, const unsigned char* octets)
{
    static constexpr char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out += '-';
        out += hex[octets[i] >> 4];
        out += hex[octets[i] & 0xf];
    }
}

/// Parses the uuid text the server prints (hex digits of either case, hyphens as above).
inline bool parse_uuid(std::string_view s, unsigned char* octets) noexcept
{
    if (s.size() != 36)
        return false;
    std::size_t pos = 0;
    for (int i = 0; i < 16; ++i) {
        if (pos == 8 || pos == 13 || pos == 18 || pos == 23) {
            if (s[pos] != '-')
                return false;
            ++pos;
        }
        unsigned v = 0;
        auto [end, ec] = std::from_chars(s.data() + pos, s.data() + pos + 2, v, 16);
        if (ec != std::errc{} || end != s.data() + pos + 2)
            return false;
        octets[i] = static_cast<unsigned char>(v);
        pos += 2;
    }
    return true;
}

/// Reads exactly `width` decimal digits at `s[pos]`, advancing `pos`.
inline bool read_digits(std::string_view s, std::size_t& pos, std::size_t width,
                        unsigned& out) noexcept
{
    if (pos + width > s.size())
        return false;
    out = 0;
    for (std::size_t i = 0; i < width; ++i) {
        const char ch = s[pos + i];
        if (ch < '0' || ch > '9')
            return false;
        out = out * 10 + static_cast<unsigned>(ch - '0');
    }
    pos += width;
    return true;
}

/// Parses "Y...Y-MM-DD" (four or more year digits) at `s[pos]`; returns days since 1970-01-01
/// of the date, not yet adjusted for a " BC" suffix (the caller passes `bc`).
inline bool parse_iso_date(std::string_view s, std::size_t& pos, bool bc,
                           std::int64_t& days) noexcept
{
    std::size_t year_end = pos;
    while (year_end < s.size() && s[year_end] >= '0' && s[year_end] <= '9')
        ++year_end;
    std::int64_t year = 0;
    if (year_end - pos < 4 || year_end - pos > 9)
        return false;
    std::from_chars(s.data() + pos, s.data() + year_end, year);
    pos = year_end;
    unsigned month = 0, day = 0;
    if (pos >= s.size() || s[pos++] != '-' || !read_digits(s, pos, 2, month) || pos >= s.size() ||
        s[pos++] != '-' || !read_digits(s, pos, 2, day))
        return false;
    if (bc) {
        if (year == 0)
            return false;
        year = 1 - year;
    }
    if (month < 1 || month > 12 || day < 1 || day > 31)
        return false;
    days = days_from_civil(year, month, day);
    const civil_date back = civil_from_days(days);
    return back.day == day; // rejects 31 April and 29 February outside leap years
}

/// Strips a trailing " BC" from `s`; true if there was one.
inline bool strip_bc(std::string_view& s) noexcept
{
    if (s.size() > 3 && s.substr(s.size() - 3) == " BC") {
        s.remove_suffix(3);
        return true;
    }
    return false;
}

/// Parses a date as the server prints it with DateStyle ISO: "2024-02-29", "0044-03-15 BC",
/// "infinity", "-infinity" (the last two as the largest and smallest `sys_days`).
inline bool parse_pg_date(std::string_view s, std::chrono::sys_days& out) noexcept
{
    if (s == "infinity" || s == "-infinity") {
        out = s[0] == '-' ? std::chrono::sys_days::min() : std::chrono::sys_days::max();
        return true;
    }
    const bool bc = strip_bc(s);
    std::size_t pos = 0;
    std::int64_t days = 0;
    if (!parse_iso_date(s, pos, bc, days) || pos != s.size())
        return false;
    out = std::chrono::sys_days(std::chrono::days(days));
    return true;
}

/// Parses a timestamp as the server prints it with DateStyle ISO, "2024-02-29 13:45:00.25", a
/// `timestamptz` with its offset ("...+05:30", "...-08", "...+00:19:32"), "... BC", "infinity"
/// and "-infinity" (as the largest and smallest time points). Without an offset the time is
/// taken as UTC. False for values out of `std::chrono::sys_time<microseconds>`'s range.
inline bool parse_pg_timestamp(std::string_view s, pgco::timestamp& out) noexcept
{
    if (s == "infinity" || s == "-infinity") {
        out = s[0] == '-' ? pgco::timestamp::min() : pgco::timestamp::max();
        return true;
    }
    const bool bc = strip_bc(s);
    std::size_t pos = 0;
    std::int64_t days = 0;
    unsigned h = 0, m = 0, sec = 0;
    if (!parse_iso_date(s, pos, bc, days) || pos >= s.size() || s[pos++] != ' ' ||
        !read_digits(s, pos, 2, h) || pos >= s.size() || s[pos++] != ':' ||
        !read_digits(s, pos, 2, m) || pos >= s.size() || s[pos++] != ':' ||
        !read_digits(s, pos, 2, sec) || h > 23 || m > 59 || sec > 59)
        return false;
    std::int64_t us = 0;
    if (pos < s.size() && s[pos] == '.') {
        ++pos;
        std::int64_t scale = 100'000;
        const std::size_t first = pos;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && scale > 0) {
            us += (s[pos] - '0') * scale;
            scale /= 10;
            ++pos;
        }
        if (pos == first)
            return false;
    }
    std::int64_t offset_s = 0;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
        const bool negative = s[pos++] == '-';
        unsigned oh = 0, om = 0, os = 0;
        if (!read_digits(s, pos, 2, oh))
            return false;
        if (pos < s.size() && s[pos] == ':' && (++pos, !read_digits(s, pos, 2, om)))
            return false;
        if (pos < s.size() && s[pos] == ':' && (++pos, !read_digits(s, pos, 2, os)))
            return false;
        offset_s = std::int64_t{oh * 3600 + om * 60 + os} * (negative ? -1 : 1);
    }
    if (pos != s.size())
        return false;
    // days * 86400e6 overflows 64 bits only for years past 290000, which the server can hold.
    std::int64_t total = 0;
    if (__builtin_mul_overflow(days, std::int64_t{86'400'000'000}, &total) ||
        __builtin_add_overflow(
            total, (std::int64_t{h * 3600 + m * 60 + sec} - offset_s) * 1'000'000 + us, &total) ||
        total == std::numeric_limits<std::int64_t>::max() ||
        total == std::numeric_limits<std::int64_t>::min())
        return false; // those two stand for infinity
    out = pgco::timestamp(std::chrono::microseconds(total));
    return true;
}

/// A binary `timestamp`/`timestamptz` (microseconds since 2000-01-01 UTC) as a time point;
/// false where it falls outside the time point's range (near year 294276).
inline bool timestamp_from_pg(std::int64_t pg_us, pgco::timestamp& out) noexcept
{
    if (pg_us == std::numeric_limits<std::int64_t>::max() ||
        pg_us == std::numeric_limits<std::int64_t>::min()) {
        out = pg_us > 0 ? pgco::timestamp::max() : pgco::timestamp::min();
        return true;
    }
    std::int64_t us = 0;
    if (__builtin_add_overflow(pg_us, pg_epoch_us, &us) ||
        us == std::numeric_limits<std::int64_t>::max())
        return false;
    out = pgco::timestamp(std::chrono::microseconds(us));
    return true;
}

} // namespace pgco::detail
