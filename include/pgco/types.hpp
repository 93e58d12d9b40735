#pragma once

#include <array>
#include <chrono>
#include <compare>
#include <cstddef>
#include <string>
#include <vector>

namespace pgco {

/// A PostgreSQL type OID.
using oid = unsigned int;

/// The contents of a `bytea` value.
using bytes = std::vector<std::byte>;

/// A `timestamp` or `timestamptz` value, at the server's resolution. A `timestamp` (without
/// time zone) is read as if its wall-clock time were UTC. The server's `infinity` and
/// `-infinity` read as `timestamp::max()` and `timestamp::min()`, and are sent back as such.
using timestamp = std::chrono::sys_time<std::chrono::microseconds>;

/// A `date` value; `infinity` and `-infinity` read as `date::max()` and `date::min()`.
using date = std::chrono::sys_days;

/// A `uuid` value: its 16 bytes in the order the text form shows them.
struct uuid
{
    std::array<unsigned char, 16> octets{};

    friend auto operator<=>(const uuid&, const uuid&) = default;
};

/// The usual text form of a uuid, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", in lowercase.
std::string to_string(const uuid& u);

/// OIDs of the built-in types pgco knows by name (from `pg_type.dat`, stable across versions).
namespace oids {
inline constexpr oid unspecified = 0;
inline constexpr oid bool_ = 16;
inline constexpr oid bytea = 17;
inline constexpr oid char_ = 18;
inline constexpr oid name = 19;
inline constexpr oid int8 = 20;
inline constexpr oid int2 = 21;
inline constexpr oid int4 = 23;
inline constexpr oid text = 25;
inline constexpr oid oid_ = 26;
inline constexpr oid json = 114;
inline constexpr oid float4 = 700;
inline constexpr oid float8 = 701;
inline constexpr oid unknown = 705;
inline constexpr oid bpchar = 1042;
inline constexpr oid varchar = 1043;
inline constexpr oid date = 1082;
inline constexpr oid timestamp = 1114;
inline constexpr oid timestamptz = 1184;
inline constexpr oid numeric = 1700;
inline constexpr oid uuid = 2950;
inline constexpr oid jsonb = 3802;
} // namespace oids

/// The SQL name of a built-in type OID, or "type <oid>" for others.
std::string type_name(oid type);

} // namespace pgco
