#include "chaos/chaos_support.hpp"

#include "support/server.hpp"

#include <pgco/log.hpp>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <iostream>
#include <mutex>
#include <stdexcept>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace pgco::chaos {

namespace {

std::string env_or_throw(const char* name)
{
    const char* v = std::getenv(name);
    if (!v || !*v)
        throw std::runtime_error(std::string(name) +
                                 " is not set: run the chaos tests through ctest, whose "
                                 "chaos_sandbox_start fixture starts their own server");
    return v;
}

std::string command_line(const std::string& args, std::chrono::seconds limit)
{
    // `timeout` bounds every server command; -k kills it if it ignores the TERM.
    return "timeout -k 5 " + std::to_string(limit.count()) + " " +
           shell_quote(PGCO_SANDBOX_SCRIPT) + " " + args + " --state " +
           shell_quote(env_or_throw("PGCO_SANDBOX_STATE")) + " </dev/null";
}

int exit_status(int rc)
{
    if (rc == -1 || !WIFEXITED(rc))
        return -1;
    return WEXITSTATUS(rc);
}

} // namespace

std::string shell_quote(const std::string& s)
{
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    return out + "'";
}

int sandbox_blocking(const std::string& args, std::chrono::seconds limit)
{
    auto cmd = command_line(args, limit);
    int rc = exit_status(std::system(cmd.c_str()));
    std::cout << "[chaos] pg-sandbox " << args << " -> exit " << rc << std::endl;
    return rc;
}

asio::awaitable<int> sandbox(std::string args, std::chrono::seconds limit)
{
    auto cmd = command_line(args, limit);
    auto start = clock_type::now();
    // The command blocks, so it runs on a thread of its own. If this coroutine is destroyed
    // early, the future's destructor joins the thread; `timeout` bounds that wait.
    auto done =
        std::async(std::launch::async, [cmd] { return exit_status(std::system(cmd.c_str())); });
    asio::steady_timer t(co_await asio::this_coro::executor);
    while (done.wait_for(0s) != std::future_status::ready) {
        t.expires_after(5ms);
        co_await t.async_wait(asio::use_awaitable);
    }
    int rc = done.get();
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count();
    std::cout << "[chaos] pg-sandbox " << args << " -> exit " << rc << " after " << ms << " ms"
              << std::endl;
    co_return rc;
}

asio::awaitable<int> psql(std::string sql)
{
    co_return co_await sandbox("psql -q -v ON_ERROR_STOP=1 -c " + shell_quote(sql) + " >/dev/null");
}

int psql_blocking(const std::string& sql)
{
    return sandbox_blocking("psql -q -v ON_ERROR_STOP=1 -c " + shell_quote(sql) + " >/dev/null");
}

asio::awaitable<void> sleep_for(std::chrono::steady_clock::duration d)
{
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

std::string url_with(const std::string& params)
{
    return pgco::test::url_with(params);
}

unsigned short server_port()
{
    return pgco::test::server_port();
}

std::string url_via_port(unsigned short port, const std::string& params)
{
    return pgco::test::url_via_port(port, params);
}

std::string unique_app_name(const std::string& prefix)
{
    static std::atomic<int> counter{0};
    return prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
}

server_running_guard::~server_running_guard()
{
    try {
        if (sandbox_blocking("status >/dev/null", 30s) != 0) {
            std::cout << "[chaos] the server was left stopped; starting it again" << std::endl;
            sandbox_blocking("server-start");
        }
    } catch (const std::exception& e) {
        std::cout << "[chaos] could not check the server: " << e.what() << std::endl;
    }
}

struct log_capture::sink : spdlog::sinks::base_sink<std::mutex>
{
    sink(std::vector<std::string> w, std::size_t n)
        : watched(std::move(w)), counts(watched.size(), 0), capacity(n)
    {}

    void sink_it_(const spdlog::details::log_msg& msg) override
    {
        std::string_view text(msg.payload.data(), msg.payload.size());
        for (std::size_t i = 0; i < watched.size(); ++i)
            if (text.find(watched[i]) != std::string_view::npos)
                ++counts[i];
        spdlog::memory_buf_t formatted;
        formatter_->format(msg, formatted);
        if (ring.size() < capacity)
            ring.emplace_back(formatted.data(), formatted.size());
        else
            ring[next % capacity].assign(formatted.data(), formatted.size());
        ++next;
    }
    void flush_() override {}

    std::size_t count_of(std::string_view w)
    {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < watched.size(); ++i)
            if (watched[i] == w)
                return counts[i];
        return 0;
    }

    std::vector<std::string> snapshot()
    {
        std::lock_guard lock(mutex_);
        std::vector<std::string> out;
        if (ring.size() < capacity) {
            out = ring;
        } else {
            for (std::size_t i = 0; i < capacity; ++i)
                out.push_back(ring[(next + i) % capacity]);
        }
        return out;
    }

    std::vector<std::string> watched;
    std::vector<std::size_t> counts;
    std::size_t capacity;
    std::vector<std::string> ring;
    std::size_t next = 0;
};

log_capture::log_capture(std::initializer_list<std::string> watched, std::size_t lines)
    : sink_(std::make_shared<sink>(std::vector<std::string>(watched),
                                   std::max<std::size_t>(lines, 1)))
{
    auto l = std::make_shared<spdlog::logger>("pgco", sink_);
    l->set_level(spdlog::level::info);
    pgco::set_logger(l);
}

log_capture::~log_capture()
{
    pgco::set_logger(nullptr);
}

std::size_t log_capture::count(std::string_view watched) const
{
    return sink_->count_of(watched);
}

std::vector<std::string> log_capture::lines() const
{
    return sink_->snapshot();
}

void log_capture::dump() const
{
    std::cout << "---- last pgco log lines ----\n";
    for (const auto& line : lines())
        std::cout << line;
    std::cout << "----" << std::endl;
}

} // namespace pgco::chaos
