// examples/03_http_server.cpp as a real process: started with the sandbox's DATABASE_URL and
// port 0, driven over real HTTP, stopped with SIGTERM while a slow request is in flight.
//
// The client is plain POSIX sockets with poll() deadlines, so this file needs neither Asio nor
// Beast (compile time) and cannot share a bug with the server's HTTP code.

#include "support/database_url.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using pgco::test::database_url;

/// The password in a postgresql://user:password@host/db URL (empty if none).
std::string password_of(const std::string& url)
{
    auto scheme_end = url.find("://");
    auto at = url.find('@');
    if (scheme_end == std::string::npos || at == std::string::npos)
        return {};
    auto colon = url.find(':', scheme_end + 3);
    if (colon > at)
        return {};
    return url.substr(colon + 1, at - colon - 1);
}

std::string with_param(const std::string& url, const std::string& param)
{
    return url + (url.find('?') == std::string::npos ? "?" : "&") + param;
}

int remaining_ms(clock_type::time_point deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

/// Waits until `fd` is readable or the deadline passes.
bool wait_readable(int fd, clock_type::time_point deadline)
{
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n > 0)
            return true;
        if (n == 0 || errno != EINTR)
            return false;
    }
}

/// The example server as a child process; killed if a test leaves it running.
class child_server
{
public:
    explicit child_server(const std::string& database_url)
    {
        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);

        // The environment as it is, with DATABASE_URL replaced.
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e)
            if (std::strncmp(*e, "DATABASE_URL=", 13) != 0)
                env.emplace_back(*e);
        env.push_back("DATABASE_URL=" + database_url);
        std::vector<char*> envp;
        for (auto& e : env)
            envp.push_back(e.data());
        envp.push_back(nullptr);
        std::string path = PGCO_HTTP_EXAMPLE;
        std::string port = "0";
        char* argv[] = {path.data(), port.data(), nullptr};

        int rc = ::posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv, envp.data());
        posix_spawn_file_actions_destroy(&actions);
        ::close(out[1]);
        out_ = out[0];
        if (rc != 0) {
            pid_ = -1;
            throw std::runtime_error("cannot start " + path + ": " + std::strerror(rc));
        }
    }

    ~child_server()
    {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0)
            ::close(out_);
    }

    child_server(const child_server&) = delete;
    child_server& operator=(const child_server&) = delete;

    /// The port from the `listening on http://127.0.0.1:<port>` line, or 0 after `limit`.
    unsigned short read_port(std::chrono::milliseconds limit = 30s)
    {
        auto deadline = clock_type::now() + limit;
        std::string text;
        while (text.find('\n') == std::string::npos) {
            if (!wait_readable(out_, deadline))
                return 0;
            char buf[256];
            ssize_t n = ::read(out_, buf, sizeof buf);
            if (n <= 0)
                return 0; // exited before listening
            text.append(buf, static_cast<std::size_t>(n));
        }
        const std::string marker = "listening on http://127.0.0.1:";
        auto at = text.find(marker);
        if (at == std::string::npos)
            return 0;
        return static_cast<unsigned short>(std::atoi(text.c_str() + at + marker.size()));
    }

    void signal(int signo) { ::kill(pid_, signo); }

    /// The exit status once it has exited (within `limit`), -1 if it was killed by a signal,
    /// nothing if it is still running.
    std::optional<int> wait_exit(std::chrono::milliseconds limit)
    {
        auto deadline = clock_type::now() + limit;
        do {
            int status = 0;
            pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            std::this_thread::sleep_for(10ms);
        } while (clock_type::now() < deadline);
        return std::nullopt;
    }

private:
    pid_t pid_ = -1;
    int out_ = -1;
};

struct http_response
{
    int status = 0; // 0: no (complete) response
    std::string headers;
    std::string body;

    bool closes() const { return headers.find("\r\nConnection: close") != std::string::npos; }
};

/// One HTTP/1.1 client connection with keep-alive; every call bounded by a deadline.
class client
{
public:
    explicit client(unsigned short port)
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    ~client() { ::close(fd_); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    bool connected() const { return connected_; }

    bool send(const std::string& method, const std::string& target, const std::string& body = {})
    {
        std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        if (!body.empty() || method == "PUT")
            req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
        req += "\r\n" + body;
        std::size_t sent = 0;
        while (sent < req.size()) {
            ssize_t n = ::send(fd_, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
            if (n <= 0)
                return false;
            sent += static_cast<std::size_t>(n);
        }
        return true;
    }

    /// Reads one response (Content-Length framed); status 0 on EOF, error or timeout.
    http_response receive(std::chrono::milliseconds limit = 15s)
    {
        auto deadline = clock_type::now() + limit;
        http_response res;
        std::size_t header_end;
        while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos)
            if (!fill(deadline))
                return res;
        std::string head = buffer_.substr(0, header_end + 2);
        std::size_t length = 0;
        for (const char* name : {"\r\nContent-Length: ", "\r\ncontent-length: "})
            if (auto at = head.find(name); at != std::string::npos)
                length = std::strtoul(head.c_str() + at + std::strlen(name), nullptr, 10);
        while (buffer_.size() < header_end + 4 + length)
            if (!fill(deadline))
                return res;
        if (head.rfind("HTTP/1.1 ", 0) != 0)
            return res;
        res.status = std::atoi(head.c_str() + 9);
        res.headers = head;
        res.body = buffer_.substr(header_end + 4, length);
        buffer_.erase(0, header_end + 4 + length);
        return res;
    }

    http_response request(const std::string& method, const std::string& target,
                          const std::string& body = {})
    {
        if (!send(method, target, body))
            return {};
        return receive();
    }

    /// True if the server closes the connection (EOF) within `limit`.
    bool closed_by_server(std::chrono::milliseconds limit)
    {
        auto deadline = clock_type::now() + limit;
        while (clock_type::now() < deadline) {
            if (!wait_readable(fd_, deadline))
                return false;
            char buf[512];
            ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0)
                return true;
        }
        return false;
    }

private:
    bool fill(clock_type::time_point deadline)
    {
        if (!wait_readable(fd_, deadline))
            return false;
        char buf[4096];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0)
            return false;
        buffer_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    int fd_ = -1;
    bool connected_ = false;
    std::string buffer_;
};

/// The value of an unlabelled sample in a Prometheus page, or -1.
long long metric_value(const std::string& page, const std::string& name)
{
    auto at = page.find("\n" + name + " ");
    if (at == std::string::npos)
        return -1;
    return std::atoll(page.c_str() + at + name.size() + 2);
}

std::string unique_key(const char* what)
{
    return std::string(what) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(clock_type::now().time_since_epoch().count());
}

TEST(HttpExample, ServesKeysHealthAndMetricsOverKeepAlive)
{
    child_server server(database_url());
    unsigned short port = server.read_port();
    ASSERT_NE(port, 0) << "the example did not print its port";

    client c(port);
    ASSERT_TRUE(c.connected());
    const std::string key = unique_key("greeting");
    const std::string path = "/kv/" + key;

    auto r = c.request("GET", path);
    EXPECT_EQ(r.status, 404) << r.headers << r.body;
    r = c.request("PUT", path, "hello, world");
    EXPECT_EQ(r.status, 204) << r.headers << r.body;
    r = c.request("GET", path);
    EXPECT_EQ(r.status, 200) << r.headers << r.body;
    EXPECT_EQ(r.body, "hello, world");
    std::string binary("a\0b\xff\n\"c", 7); // bytea: any bytes come back unchanged
    r = c.request("PUT", path, binary);
    EXPECT_EQ(r.status, 204);
    r = c.request("GET", path);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, binary);
    r = c.request("DELETE", path);
    EXPECT_EQ(r.status, 204);
    r = c.request("GET", path);
    EXPECT_EQ(r.status, 404);

    // A percent-encoded key is decoded; malformed or empty keys and unknown routes are refused.
    r = c.request("PUT", "/kv/" + key + "%20two", "2");
    EXPECT_EQ(r.status, 204);
    r = c.request("GET", "/kv/" + key + "%20two");
    EXPECT_EQ(r.body, "2");
    r = c.request("DELETE", "/kv/" + key + "%20two");
    EXPECT_EQ(r.status, 204);
    EXPECT_EQ(c.request("GET", "/kv/").status, 400);
    EXPECT_EQ(c.request("GET", "/kv/%zz").status, 400);
    EXPECT_EQ(c.request("POST", path, "x").status, 405);
    EXPECT_EQ(c.request("GET", "/nothing-here").status, 404);

    r = c.request("GET", "/health");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, R"({"status":"ok"})");

    r = c.request("GET", "/metrics");
    EXPECT_EQ(r.status, 200);
    EXPECT_NE(r.headers.find("Content-Type: text/plain; version=0.0.4"), std::string::npos)
        << r.headers;
    EXPECT_NE(r.body.find("# TYPE pgco_connections_open gauge\n"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("\npgco_connections_open{pool=\"main\"} "), std::string::npos);
    EXPECT_NE(r.body.find("\npgco_acquires_total{pool=\"main\"} "), std::string::npos);
    EXPECT_NE(r.body.find("\npgco_acquire_wait_seconds{pool=\"main\",quantile=\"0.99\"} "),
              std::string::npos);
    // All 16 requests so far, over this one keep-alive connection.
    EXPECT_EQ(metric_value(r.body, "kv_http_requests_total"), 16);

    server.signal(SIGTERM);
    EXPECT_TRUE(c.closed_by_server(5s)) << "an idle keep-alive connection stays open";
    EXPECT_EQ(server.wait_exit(15s), std::optional<int>(0));
}

TEST(HttpExample, SigtermLetsTheRequestInFlightFinish)
{
    child_server server(database_url());
    unsigned short port = server.read_port();
    ASSERT_NE(port, 0) << "the example did not print its port";

    client idle(port);
    ASSERT_EQ(idle.request("GET", "/health").status, 200);

    client slow(port);
    ASSERT_TRUE(slow.send("GET", "/sleep?ms=1500"));
    // Until the server reports it in flight (this /metrics request counts too), so that the
    // signal cannot arrive before the request was read.
    client probe(port);
    auto deadline = clock_type::now() + 10s;
    long long in_flight = 0;
    while (in_flight < 2 && clock_type::now() < deadline) {
        in_flight =
            metric_value(probe.request("GET", "/metrics").body, "kv_http_requests_in_flight");
        if (in_flight < 2)
            std::this_thread::sleep_for(10ms);
    }
    ASSERT_GE(in_flight, 2) << "the slow request never showed up in flight";

    auto signalled = clock_type::now();
    server.signal(SIGTERM);

    // Idle keep-alive connections are closed at once, new ones are refused...
    EXPECT_TRUE(idle.closed_by_server(5s));
    EXPECT_TRUE(probe.closed_by_server(5s));
    client late(port);
    EXPECT_FALSE(late.connected()) << "still accepting after SIGTERM";

    // ...while the request in flight gets its answer, marked as the connection's last.
    auto r = slow.receive(10s);
    EXPECT_EQ(r.status, 200) << r.headers << r.body;
    EXPECT_EQ(r.body, "slept 1500 ms\n");
    EXPECT_TRUE(r.closes()) << r.headers;
    EXPECT_TRUE(slow.closed_by_server(5s));

    auto status = server.wait_exit(15s);
    auto waited = clock_type::now() - signalled;
    EXPECT_EQ(status, std::optional<int>(0));
    EXPECT_LT(waited, 12s);
}

TEST(HttpExample, DatabaseErrorGives503WithoutThePassword)
{
    // A statement that outlives query_timeout fails with P1008, a real database error.
    auto url = database_url();
    child_server server(with_param(url, "query_timeout=0.3"));
    unsigned short port = server.read_port();
    ASSERT_NE(port, 0) << "the example did not print its port";

    client c(port);
    auto r = c.request("GET", "/sleep?ms=3000");
    EXPECT_EQ(r.status, 503) << r.headers << r.body;
    EXPECT_NE(r.headers.find("Content-Type: application/json"), std::string::npos) << r.headers;
    EXPECT_EQ(r.body.rfind(R"({"error":")", 0), 0u) << r.body;
    EXPECT_NE(r.body.find("P1008"), std::string::npos) << r.body;
    auto password = password_of(url);
    ASSERT_FALSE(password.empty());
    EXPECT_EQ(r.body.find(password), std::string::npos) << r.body;

    // The service goes on answering after the failure.
    EXPECT_EQ(c.request("GET", "/health").status, 200);

    server.signal(SIGINT);
    EXPECT_EQ(server.wait_exit(15s), std::optional<int>(0));
}

} // namespace
