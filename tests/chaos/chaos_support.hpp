#pragma once

// Helpers for the fault suite: controlling the chaos sandbox server (scripts/pg-sandbox) from a
// test without blocking the io_context, guards that leave the server as a test found it, URLs,
// and a capture of pgco's log for diagnostics.

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pgco::chaos {

using clock_type = std::chrono::steady_clock;

/// `s` quoted for /bin/sh.
std::string shell_quote(const std::string& s);

/// Runs `scripts/pg-sandbox <args> --state "$PGCO_SANDBOX_STATE"`, killed after `limit`.
/// `args` is spliced into a shell command as is (quote parts with `shell_quote`). Blocks: never
/// call it on the io_context's thread while work is running there; use `sandbox` instead.
/// Returns the exit status (-1 if the command did not exit normally).
int sandbox_blocking(const std::string& args,
                     std::chrono::seconds limit = std::chrono::seconds(90));

/// The same, run on a std::thread of its own; the calling coroutine polls for the result every
/// few milliseconds, so the io_context keeps running the load meanwhile.
boost::asio::awaitable<int> sandbox(std::string args,
                                    std::chrono::seconds limit = std::chrono::seconds(90));

/// `psql -c <sql>` as superuser on the chaos server (async / blocking).
boost::asio::awaitable<int> psql(std::string sql);
int psql_blocking(const std::string& sql);

/// Sleeps on an Asio timer.
boost::asio::awaitable<void> sleep_for(std::chrono::steady_clock::duration d);

/// The chaos server's URL with `params` (a query string without '?') appended.
std::string url_with(const std::string& params);

/// The chaos server's URL with its port replaced by `port` (for a proxy in front of it).
std::string url_via_port(unsigned short port, const std::string& params);

/// The chaos server's TCP port.
unsigned short server_port();

/// An application_name unique to this process and call.
std::string unique_app_name(const std::string& prefix);

/// On destruction (the test's end, also after a failure), starts the chaos server again if it
/// is not running, so that one failing scenario does not take the following ones down.
class server_running_guard
{
public:
    server_running_guard() = default;
    ~server_running_guard();
    server_running_guard(const server_running_guard&) = delete;
    server_running_guard& operator=(const server_running_guard&) = delete;
};

/// Captures what pgco logs (info and above) while it lives: keeps the last `lines` lines, so a
/// failing scenario can show the story without flooding the output of passing ones, and counts
/// the messages containing each of `watched`.
class log_capture
{
public:
    explicit log_capture(std::initializer_list<std::string> watched = {}, std::size_t lines = 300);
    ~log_capture();
    log_capture(const log_capture&) = delete;
    log_capture& operator=(const log_capture&) = delete;

    /// Messages logged so far that contain `watched` (one of the constructor's strings).
    std::size_t count(std::string_view watched) const;
    /// The captured lines, oldest first.
    std::vector<std::string> lines() const;
    /// Prints them to stdout (call when the test failed).
    void dump() const;

    struct sink;

private:
    std::shared_ptr<sink> sink_;
};

} // namespace pgco::chaos
