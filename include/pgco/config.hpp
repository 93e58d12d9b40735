#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace pgco {

/// Settings for a pool and the connections it opens.
///
/// Read them from a `postgres://` / `postgresql://` URI or a libpq `key=value` string with
/// `from_url`, or from an environment variable with `from_env`. pgco's own parameters are
/// taken out of the string before libpq sees the rest:
///
/// | parameter          | field              | default | meaning                              |
/// |--------------------|--------------------|---------|--------------------------------------|
/// | `connection_limit` | `connection_limit` | 10      | most connections the pool opens      |
/// | `pool_timeout`     | `pool_timeout`     | 20 s    | longest wait for a pooled connection |
/// | `connect_timeout`  | `connect_timeout`  | 10 s    | longest time to open one connection  |
///
/// Timeouts are seconds and may have a fraction (`0.5`); `0` means no limit, as in libpq.
struct pool_options
{
    /// The connection string handed to libpq, without pgco's own parameters.
    std::string conninfo;
    /// The most connections the pool keeps open at once (at least 1).
    std::size_t connection_limit = 10;
    /// How long `acquire` may wait for a connection, connecting included; zero waits forever.
    std::chrono::milliseconds pool_timeout{std::chrono::seconds(20)};
    /// How long opening one connection may take, name lookup included; zero waits forever.
    std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};

    /// Parses a URI or `key=value` string. Throws `pgco::error` with
    /// `errc::invalid_configuration` naming the offending parameter; the message never
    /// contains the password.
    static pool_options from_url(std::string_view url);

    /// Parses the value of the environment variable `name`; throws if it is unset or invalid.
    static pool_options from_env(const char* name = "DATABASE_URL");

    /// `conninfo` with every password replaced by `***`, fit for logs and error messages.
    std::string redacted() const;
};

/// Replaces the password in a URI or `key=value` connection string with `***`. Strings that
/// cannot be parsed are reduced to their scheme, so nothing secret can leak through them.
std::string redact_conninfo(std::string_view conninfo);

} // namespace pgco
