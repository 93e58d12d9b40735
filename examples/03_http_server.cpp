// A small REST key-value service on Boost.Beast, every request answered from a pgco pool.
//
//   DATABASE_URL=postgresql://user:password@localhost:5432/db ./pgco_example_03_http_server [PORT]
//
//   GET    /kv/<key>     200 with the value, 404 if there is none
//   PUT    /kv/<key>     body = value; insert or replace, 204
//   DELETE /kv/<key>     204 (also when there was nothing to delete)
//   GET    /health       200 if the database answers, 503 if not
//   GET    /metrics      the pool's stats in the Prometheus text format
//   GET    /sleep?ms=N   debug: a request that spends N ms (at most 10000) in the database
//
// It listens on 127.0.0.1, on the port given as argument, else in $PORT, else 8080; 0 picks a
// free one. Once listening it prints `listening on http://127.0.0.1:<port>` on stdout. A
// database failure gives 503 with a short JSON error. SIGINT or SIGTERM stops it gracefully:
// no new connections, requests in flight finish (for at most 10 s), idle keep-alive
// connections are closed, then the pool is closed and it exits with 0.
// (`scripts/demo` and `scripts/load-http` start a throwaway server and set DATABASE_URL.)

#include <pgco/pgco.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <list>
#include <optional>
#include <string>
#include <string_view>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

// Errors as values: a client closing its connection is routine, not an exception.
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr auto keep_alive_timeout = 30s; // an idle keep-alive connection is closed after this
constexpr auto write_timeout = 30s;      // a client that does not read its answer is dropped
constexpr auto drain_timeout = 10s;      // longest wait for requests in flight at shutdown
constexpr auto pool_close_timeout = 2s;  // then for statements still running on the pool

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

/// One client connection, as the shutdown sees it.
struct session_entry
{
    beast::tcp_stream* stream;
    bool busy = false; // a request has been read and its answer not yet written
};

struct app
{
    pgco::pool& db;
    tcp::acceptor acceptor;
    std::list<session_entry> sessions; // a list: entries stay put while others come and go
    bool stopping = false;
    asio::steady_timer drained; // cancelled when the last session ends during shutdown
    std::uint64_t requests = 0;

    std::size_t in_flight() const
    {
        std::size_t n = 0;
        for (const auto& s : sessions)
            n += s.busy ? 1 : 0;
        return n;
    }
};

response make_response(const request& req, http::status status, std::string body,
                       std::string_view content_type = "text/plain; charset=utf-8")
{
    response res{status, req.version()};
    res.set(http::field::server, "pgco-example");
    if (!body.empty() || status == http::status::ok)
        res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    return res;
}

std::string json_escape(std::string_view s)
{
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out;
}

int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/// The key in a `/kv/<key>` path, percent-decoded; nothing if it is empty or malformed.
std::optional<std::string> decode_key(std::string_view raw)
{
    std::string key;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] != '%') {
            key += raw[i];
            continue;
        }
        if (i + 2 >= raw.size())
            return std::nullopt;
        int hi = hex_value(raw[i + 1]);
        int lo = hex_value(raw[i + 2]);
        if (hi < 0 || lo < 0)
            return std::nullopt;
        key += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    if (key.empty() || key.size() > 1024)
        return std::nullopt;
    return key;
}

/// The value of `name` in a query string such as `ms=300&x=1`.
std::string_view query_param(std::string_view query, std::string_view name)
{
    while (!query.empty()) {
        auto amp = query.find('&');
        auto pair = query.substr(0, amp);
        if (pair.size() > name.size() && pair.starts_with(name) && pair[name.size()] == '=')
            return pair.substr(name.size() + 1);
        if (amp == std::string_view::npos)
            break;
        query.remove_prefix(amp + 1);
    }
    return {};
}

/// Answers one request; pgco errors escape to `handle`, which turns them into 503.
asio::awaitable<response> route(app& a, const request& req)
{
    std::string_view target = req.target();
    std::string_view path = target.substr(0, target.find('?'));
    std::string_view query;
    if (path.size() < target.size())
        query = target.substr(path.size() + 1);
    const auto method = req.method();

    if (path.starts_with("/kv/")) {
        auto key = decode_key(path.substr(4));
        if (!key)
            co_return make_response(req, http::status::bad_request, "bad key\n");
        if (method == http::verb::get) {
            // Values are bytea: any bytes a client PUTs come back unchanged. A read changes
            // nothing, so it may be repeated even when its answer was lost (a restart).
            auto rows = co_await a.db.query<pgco::bytes>(
                pgco::idempotent, "SELECT value FROM pgco_kv WHERE key = $1", *key);
            if (rows.empty())
                co_return make_response(req, http::status::not_found, "not found\n");
            std::string body(reinterpret_cast<const char*>(rows[0].data()), rows[0].size());
            co_return make_response(req, http::status::ok, std::move(body),
                                    "application/octet-stream");
        }
        if (method == http::verb::put) {
            const auto* data = reinterpret_cast<const std::byte*>(req.body().data());
            pgco::bytes value(data, data + req.body().size());
            // An upsert gives the same end state however often it runs: safe to repeat even
            // when the answer was lost, so the pool may retry it after a reconnect.
            co_await a.db.execute(pgco::idempotent,
                                  "INSERT INTO pgco_kv (key, value) VALUES ($1, $2) "
                                  "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                                  *key, value);
            co_return make_response(req, http::status::no_content, {});
        }
        if (method == http::verb::delete_) {
            // Always 204: a retried DELETE whose first answer was lost finds nothing, and
            // reporting 404 then would be wrong. Afterwards the key is absent either way.
            co_await a.db.execute(pgco::idempotent, "DELETE FROM pgco_kv WHERE key = $1", *key);
            co_return make_response(req, http::status::no_content, {});
        }
        auto res = make_response(req, http::status::method_not_allowed, "method not allowed\n");
        res.set(http::field::allow, "GET, PUT, DELETE");
        co_return res;
    }

    if (method != http::verb::get) {
        auto res = make_response(req, http::status::method_not_allowed, "method not allowed\n");
        res.set(http::field::allow, "GET");
        co_return res;
    }
    if (path == "/health") {
        bool up = co_await a.db.is_connected();
        co_return make_response(req, up ? http::status::ok : http::status::service_unavailable,
                                up ? R"({"status":"ok"})" : R"({"status":"unavailable"})",
                                "application/json");
    }
    if (path == "/metrics") {
        std::string body = pgco::to_prometheus(a.db.stats(), "pgco", R"(pool="main")");
        body += "# HELP kv_http_requests_in_flight HTTP requests being answered.\n"
                "# TYPE kv_http_requests_in_flight gauge\n"
                "kv_http_requests_in_flight " +
                std::to_string(a.in_flight()) +
                "\n"
                "# HELP kv_http_requests_total HTTP requests read.\n"
                "# TYPE kv_http_requests_total counter\n"
                "kv_http_requests_total " +
                std::to_string(a.requests) + "\n";
        co_return make_response(req, http::status::ok, std::move(body),
                                "text/plain; version=0.0.4; charset=utf-8");
    }
    if (path == "/sleep") {
        auto text = query_param(query, "ms");
        std::int64_t ms = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
        if (ec != std::errc{} || end != text.data() + text.size() || ms < 0 || ms > 10000)
            co_return make_response(req, http::status::bad_request, "ms must be 0..10000\n");
        co_await a.db.execute("SELECT pg_sleep($1::float8 / 1000)", ms);
        co_return make_response(req, http::status::ok, "slept " + std::to_string(ms) + " ms\n");
    }
    co_return make_response(req, http::status::not_found, "not found\n");
}

asio::awaitable<response> handle(app& a, const request& req)
{
    try {
        co_return co_await route(a, req);
    } catch (const pgco::error& e) {
        // pgco's messages never contain the password; the client still gets only the short
        // description of the code (and the SQLSTATE), the log gets the whole story.
        std::fprintf(stderr, "request %s failed: %s\n", std::string(req.target()).c_str(),
                     e.what());
        std::string body = R"({"error":")" + json_escape(e.code().message()) + '"';
        if (!e.sqlstate().empty())
            body += R"(,"sqlstate":")" + json_escape(e.sqlstate()) + '"';
        body += "}";
        co_return make_response(req, http::status::service_unavailable, std::move(body),
                                "application/json");
    }
}

/// One coroutine per client connection: read a request, answer it, repeat while keep-alive.
asio::awaitable<void> session(app& a, tcp::socket socket)
{
    beast::tcp_stream stream(std::move(socket));
    auto entry = a.sessions.insert(a.sessions.end(), session_entry{&stream});
    struct unregister
    {
        app& a;
        std::list<session_entry>::iterator entry;
        ~unregister()
        {
            a.sessions.erase(entry);
            if (a.stopping && a.sessions.empty())
                a.drained.cancel();
        }
    } guard{a, entry};

    beast::flat_buffer buffer;
    while (!a.stopping) {
        request req;
        stream.expires_after(keep_alive_timeout);
        auto [read_ec, read_n] = co_await http::async_read(stream, buffer, req, use_tuple);
        if (read_ec)
            break; // closed by the client, timed out, malformed, or cancelled by the shutdown
        entry->busy = true;
        ++a.requests;
        response res = co_await handle(a, req);
        // During shutdown the answer says so, and the connection ends after it.
        res.keep_alive(req.keep_alive() && !a.stopping);
        res.prepare_payload();
        stream.expires_after(write_timeout);
        auto [write_ec, write_n] = co_await http::async_write(stream, res, use_tuple);
        entry->busy = false;
        if (write_ec || !res.keep_alive())
            break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> accept_loop(app& a)
{
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer pause(ex);
    while (!a.stopping) {
        auto [ec, socket] = co_await a.acceptor.async_accept(use_tuple);
        if (a.stopping || !a.acceptor.is_open())
            break;
        if (ec) {
            // Out of file descriptors and the like: give clients time to leave, do not spin.
            std::fprintf(stderr, "accept failed: %s\n", ec.message().c_str());
            pause.expires_after(100ms);
            co_await pause.async_wait(use_tuple);
            continue;
        }
        socket.set_option(tcp::no_delay(true), ec);
        asio::co_spawn(ex, session(a, std::move(socket)), asio::detached);
    }
}

/// Stops accepting, closes idle connections, waits for requests in flight (bounded), then
/// closes the pool.
asio::awaitable<void> shut_down(app& a)
{
    a.stopping = true;
    beast::error_code ignored;
    a.acceptor.close(ignored);
    for (auto& s : a.sessions)
        if (!s.busy)
            s.stream->cancel(); // its read ends with operation_aborted, the session ends

    if (!a.sessions.empty()) {
        a.drained.expires_after(drain_timeout);
        co_await a.drained.async_wait(use_tuple); // cancelled when the last session ends
    }
    if (!a.sessions.empty()) {
        std::fprintf(stderr, "drain deadline passed with %zu connection(s) still busy\n",
                     a.sessions.size());
        for (auto& s : a.sessions)
            s.stream->socket().close(ignored);
    }
    co_await a.db.close(pool_close_timeout);
}

/// Opens the listening socket on 127.0.0.1:`port` and says where it is.
void start_listening(app& a, unsigned short port)
{
    tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
    a.acceptor.open(endpoint.protocol());
    a.acceptor.set_option(tcp::acceptor::reuse_address(true));
    a.acceptor.bind(endpoint);
    a.acceptor.listen();
    std::printf("listening on http://127.0.0.1:%u\n",
                static_cast<unsigned>(a.acceptor.local_endpoint().port()));
    std::fflush(stdout);
}

asio::awaitable<void> serve(pgco::pool& db, unsigned short port, int& status)
{
    auto ex = co_await asio::this_coro::executor;
    app a{db, tcp::acceptor(ex), {}, false, asio::steady_timer(ex)};
    bool ready = false;
    try {
        co_await db.execute("CREATE TABLE IF NOT EXISTS pgco_kv "
                            "(key text PRIMARY KEY, value bytea NOT NULL)");
        start_listening(a, port);
        ready = true;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
    }
    if (!ready) {
        // The pool keeps background work on the executor until closed: close it, or
        // io_context::run() would never return.
        status = 1;
        co_await db.close(pool_close_timeout);
        co_return;
    }

    asio::signal_set signals(ex, SIGINT, SIGTERM);
    asio::co_spawn(ex, accept_loop(a), asio::detached);
    auto [ec, signo] = co_await signals.async_wait(use_tuple);
    // From now on a second Ctrl-C has its usual effect, for an impatient operator.
    signals.clear(ec);
    std::fprintf(stderr, "signal %d: shutting down\n", signo);
    co_await shut_down(a);
}

} // namespace

int main(int argc, char** argv)
{
    const char* port_text = argc > 1 ? argv[1] : std::getenv("PORT");
    std::string_view text = port_text ? port_text : "8080";
    unsigned short port = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        std::fprintf(stderr, "usage: %s [PORT]   (DATABASE_URL names the database)\n", argv[0]);
        return 2;
    }

    asio::io_context io;
    int status = 0;
    try {
        pgco::pool db(io.get_executor(), pgco::pool_options::from_env("DATABASE_URL"));
        asio::co_spawn(io, serve(db, port, status), [&](std::exception_ptr e) {
            if (!e)
                return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                std::fprintf(stderr, "error: %s\n", ex.what());
                status = 1;
            }
        });
        io.run(); // returns once the pool is closed and every connection has ended
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return status;
}
