// pgco::connection against the real server started by the CTest fixture.

#include "support/fault_proxy.hpp"
#include "support/server.hpp"

#include "connection_impl.hpp" // to make the next send read at once (src/early_read.hpp)

#include <pgco/batch.hpp>
#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/log.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;
using pgco::test::clock_type;
using pgco::test::connected;
using pgco::test::database_url;
using pgco::test::expect_error;
using pgco::test::ms_since;
using pgco::test::run;
using pgco::test::server_port;
using pgco::test::sleep_for;
using pgco::test::url_via_ports;

TEST(connection, connects_and_runs_a_query)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        EXPECT_TRUE(c.is_open());
        EXPECT_GT(c.backend_pid(), 0);
        EXPECT_EQ(co_await c.query_one<int>("SELECT 1"), 1);
        EXPECT_EQ(co_await c.query_one<int>("SELECT pg_backend_pid()"), c.backend_pid());
        EXPECT_TRUE(c.request_sent());
    });
}

TEST(connection, resolves_host_names_through_asio)
{
    auto url = database_url();
    auto host = url.find("127.0.0.1");
    ASSERT_NE(host, std::string::npos);
    url.replace(host, 9, "localhost");
    run([&]() -> awaitable<void> {
        auto c = co_await connected(url);
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT current_user::text"), "pgco");
    });
}

TEST(connection, wrong_password_is_a_clear_error_without_the_password)
{
    const std::string wrong = "Wr0ng-Passw0rd-4711";
    run([&]() -> awaitable<void> {
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await connected(pgco::test::url_with_password(wrong)); });
        EXPECT_EQ(e.code(), pgco::errc::authentication_failed);
        EXPECT_EQ(e.sqlstate(), "28P01");
        EXPECT_NE(std::string(e.what()).find("password authentication failed"), std::string::npos)
            << e.what();
        EXPECT_EQ(std::string(e.what()).find(wrong), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find(pgco::test::database_password()), std::string::npos);
        EXPECT_FALSE(e.request_sent());
    });
}

TEST(connection, password_never_reaches_the_log)
{
    std::ostringstream out;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    auto captured = std::make_shared<spdlog::logger>("pgco", sink);
    captured->set_level(spdlog::level::trace);
    pgco::set_logger(captured);
    run([&]() -> awaitable<void> {
        auto c = co_await connected();
        co_await c.query_one<int>("SELECT 1");
        co_await expect_error([&]() -> awaitable<void> {
            co_await connected(pgco::test::url_with_password("other-secret-99"));
        });
    });
    pgco::set_logger(nullptr);
    auto log = out.str();
    EXPECT_NE(log.find("Database connected successfully"), std::string::npos) << log;
    EXPECT_NE(log.find("***"), std::string::npos) << log;
    EXPECT_EQ(log.find(pgco::test::database_password()), std::string::npos) << log;
    EXPECT_EQ(log.find("other-secret-99"), std::string::npos) << log;
}

TEST(connection, connect_timeout_against_a_server_that_never_answers)
{
    run([]() -> awaitable<void> {
        // The kernel completes the TCP handshake for a listening socket even though nobody
        // ever accepts or answers: libpq's startup then waits forever without pgco's timer.
        asio::ip::tcp::acceptor silent(co_await asio::this_coro::executor,
                                       {asio::ip::make_address("127.0.0.1"), 0});
        auto port = silent.local_endpoint().port();
        auto opts = pgco::pool_options::from_url(
            "postgresql://u:secret@127.0.0.1:" + std::to_string(port) + "/db?connect_timeout=1");
        pgco::connection c(co_await asio::this_coro::executor);
        auto start = clock_type::now();
        auto e = co_await expect_error([&]() -> awaitable<void> { co_await c.connect(opts); });
        auto elapsed = ms_since(start);
        EXPECT_EQ(e.code(), pgco::errc::connect_timeout) << e.what();
        EXPECT_NE(std::string(e.what()).find("P1002"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find("secret"), std::string::npos) << e.what();
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_GE(elapsed, 990);
        EXPECT_LT(elapsed, 1500);
        EXPECT_FALSE(c.is_open());
    });
}

namespace {

/// A listener that says yes to libpq's SSLRequest, and a client certificate that is a pipe
/// nobody writes to: libpq's connect step then blocks opening it, inside PQconnectPoll.
/// `release()` opens the pipe for writing and closes it at once: every blocked step reads an
/// empty certificate and fails, and its worker closes the connection, which hangs up here.
class blocking_ssl_listener
{
public:
    explicit blocking_ssl_listener(int connections) : expected_(connections)
    {
        char dir_template[] = "/tmp/pgco-blocked-step-XXXXXX";
        if (::mkdtemp(dir_template) == nullptr)
            throw std::runtime_error(std::strerror(errno));
        dir_ = dir_template;
        fifo_ = dir_ + "/client.crt";
        if (::mkfifo(fifo_.c_str(), 0600) != 0)
            throw std::runtime_error(std::strerror(errno));
        responder_ = std::thread([this] { serve(); });
    }

    ~blocking_ssl_listener()
    {
        release();
        if (responder_.joinable())
            responder_.join();
        ::unlink(fifo_.c_str());
        ::rmdir(dir_.c_str());
    }

    std::string url() const
    {
        return "postgresql://u:secret@127.0.0.1:" + std::to_string(port_) +
               "/db?connect_timeout=1&sslmode=require&gssencmode=disable&sslcert=" + fifo_;
    }

    int ssl_accepted() const { return ssl_accepted_; }
    int hung_up() const { return hung_up_; }

    /// Ends the steps blocked on the pipe. With `wait_for_reader`, first waits up to that long
    /// for a step to open it (one that opens it later would block for good).
    void release(std::chrono::milliseconds wait_for_reader = 0ms)
    {
        if (released_.exchange(true))
            return;
        auto until = clock_type::now() + wait_for_reader;
        for (;;) {
            // O_NONBLOCK fails (ENXIO) when no one has the pipe open for reading.
            int w = ::open(fifo_.c_str(), O_WRONLY | O_NONBLOCK);
            if (w >= 0) {
                ::close(w);
                break;
            }
            if (clock_type::now() >= until)
                break;
            std::this_thread::sleep_for(5ms);
        }
        done_ = true;
    }

    /// Waits until every accepted connection was closed by the client, up to `limit`.
    bool wait_hung_up(std::chrono::milliseconds limit)
    {
        auto until = clock_type::now() + limit;
        while (hung_up_ < ssl_accepted_ && clock_type::now() < until)
            std::this_thread::sleep_for(10ms);
        return hung_up_ >= ssl_accepted_;
    }

private:
    void serve()
    {
        std::vector<asio::ip::tcp::socket> open;
        listener_.non_blocking(true);
        auto until = clock_type::now() + 30s;
        while (clock_type::now() < until) {
            boost::system::error_code ec;
            if (static_cast<int>(open.size()) < expected_) {
                asio::ip::tcp::socket s(io_);
                listener_.accept(s, ec);
                if (!ec) {
                    s.non_blocking(false);
                    char request[8];
                    asio::read(s, asio::buffer(request), ec);
                    if (!ec)
                        asio::write(s, asio::buffer("S", 1), ec);
                    if (!ec) {
                        ++ssl_accepted_;
                        s.non_blocking(true);
                        open.push_back(std::move(s));
                    }
                }
            }
            // libpq sends nothing more until it has read the certificate: a read ends when the
            // connection is closed (the step given up on has finished).
            for (auto& s : open) {
                if (!s.is_open())
                    continue;
                char byte;
                s.read_some(asio::buffer(&byte, 1), ec);
                if (ec != asio::error::would_block) {
                    s.close();
                    ++hung_up_;
                }
            }
            if (done_ && hung_up_ >= ssl_accepted_ && ssl_accepted_ > 0)
                return;
            std::this_thread::sleep_for(5ms);
        }
    }

    int expected_;
    std::string dir_, fifo_;
    asio::io_context io_;
    asio::ip::tcp::acceptor listener_{io_, {asio::ip::make_address("127.0.0.1"), 0}};
    unsigned short port_ = listener_.local_endpoint().port();
    std::atomic<int> ssl_accepted_{0}, hung_up_{0};
    std::atomic<bool> released_{false}, done_{false};
    std::thread responder_;
};

} // namespace

// A connect step can block inside libpq: here it opens the client certificate, a pipe no one
// writes to, after a listener said yes to SSL. The connect ends at connect_timeout all the
// same; the step is left to its worker, which closes the connection once the step returns.
TEST(connection, a_connect_step_blocked_inside_libpq_ends_at_connect_timeout)
{
    blocking_ssl_listener blocking(1);
    run([&]() -> awaitable<void> {
        auto opts = pgco::pool_options::from_url(blocking.url());
        pgco::connection c(co_await asio::this_coro::executor);
        auto start = clock_type::now();
        auto e = co_await expect_error([&]() -> awaitable<void> { co_await c.connect(opts); });
        auto elapsed = ms_since(start);
        EXPECT_EQ(e.code(), pgco::errc::connect_timeout) << e.what();
        EXPECT_GE(elapsed, 990);
        EXPECT_LT(elapsed, 1500);
        EXPECT_FALSE(c.is_open());
    });
    EXPECT_EQ(blocking.ssl_accepted(), 1);
    EXPECT_EQ(blocking.hung_up(), 0); // the step is still blocked on the pipe
    blocking.release();
    EXPECT_TRUE(blocking.wait_hung_up(10s));
}

// An io_context destroyed while a connect step's completion waits in its queue (the loop no
// longer runs, the worker has just finished) frees the connecting coroutine: the completion
// must not be kept alive by the cancellation handler it left in the coroutine's slot.
TEST(connection, an_io_context_destroyed_with_a_connect_step_completion_queued_frees_the_coroutine)
{
    blocking_ssl_listener blocking(1);
    std::weak_ptr<int> coroutine_alive;
    {
        asio::io_context io;
        auto token = std::make_shared<int>(0);
        coroutine_alive = token;
        asio::co_spawn(
            io,
            [token = std::move(token), url = blocking.url()]() -> awaitable<void> {
                auto opts = pgco::pool_options::from_url(url);
                pgco::connection c(co_await asio::this_coro::executor);
                co_await c.connect(opts);
            },
            asio::detached);
        // Until the step reads the client certificate: it blocks on the pipe, in a worker.
        auto until = clock_type::now() + 10s;
        while (blocking.ssl_accepted() < 1 && clock_type::now() < until)
            io.run_for(10ms);
        ASSERT_EQ(blocking.ssl_accepted(), 1);
        EXPECT_FALSE(coroutine_alive.expired());
        // The step fails and posts its completion to `io`, which no longer runs. (Nothing
        // tells when the worker has posted it; it takes a few ms, and io must outlive that.)
        blocking.release(10s);
        std::this_thread::sleep_for(1s);
    }
    EXPECT_TRUE(coroutine_alive.expired()) << "the connecting coroutine leaked";
    EXPECT_TRUE(blocking.wait_hung_up(5s)) << "its libpq connection was not closed";
}

// Both connect workers held by steps blocked inside libpq: spare workers stand in, and a
// connect to a working server goes ahead at once instead of waiting for them.
TEST(connection, connect_steps_blocked_inside_libpq_do_not_hold_up_other_connects)
{
    blocking_ssl_listener blocking(2);
    run([&]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto opts = pgco::pool_options::from_url(blocking.url());
        pgco::connection a(ex), b(ex);
        // One after the other: each blocks its own worker.
        for (auto* c : {&a, &b}) {
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await c->connect(opts); });
            EXPECT_EQ(e.code(), pgco::errc::connect_timeout) << e.what();
        }
        EXPECT_EQ(blocking.ssl_accepted(), 2);
        EXPECT_EQ(blocking.hung_up(), 0);
        auto start = clock_type::now();
        auto c = co_await connected();
        EXPECT_LT(ms_since(start), 1000) << "the connect waited for a blocked step";
        EXPECT_EQ(co_await c.query_one<int>("SELECT 1"), 1);
    });
    blocking.release();
    EXPECT_TRUE(blocking.wait_hung_up(10s));
}

TEST(connection, a_host_that_never_answers_costs_connect_timeout_then_the_next_is_tried)
{
    // The old primary's address black-holed after a failover: connect_timeout applies to each
    // host, as libpq documents, so the next host still gets its turn.
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::ip::tcp::acceptor silent(ex, {asio::ip::make_address("127.0.0.1"), 0});
        auto opts = pgco::pool_options::from_url(
            url_via_ports({silent.local_endpoint().port(), server_port()}, "connect_timeout=1"));
        pgco::connection c(ex);
        auto start = clock_type::now();
        co_await c.connect(opts);
        auto elapsed = ms_since(start);
        EXPECT_GE(elapsed, 990);
        EXPECT_LT(elapsed, 3000);
        EXPECT_EQ(co_await c.query_one<int>("SELECT current_setting('port')::int"),
                  static_cast<int>(server_port()));
    });
}

TEST(connection, every_host_timing_out_is_one_connect_timeout_naming_each)
{
    run([]() -> awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::ip::tcp::acceptor first(ex, {asio::ip::make_address("127.0.0.1"), 0});
        asio::ip::tcp::acceptor second(ex, {asio::ip::make_address("127.0.0.1"), 0});
        auto p1 = first.local_endpoint().port(), p2 = second.local_endpoint().port();
        auto opts = pgco::pool_options::from_url(url_via_ports({p1, p2}, "connect_timeout=0.5"));
        pgco::connection c(ex);
        auto start = clock_type::now();
        auto e = co_await expect_error([&]() -> awaitable<void> { co_await c.connect(opts); });
        auto elapsed = ms_since(start);
        std::string what = e.what();
        EXPECT_EQ(e.code(), pgco::errc::connect_timeout) << what;
        EXPECT_NE(what.find("P1002"), std::string::npos) << what;
        EXPECT_NE(what.find("port " + std::to_string(p1)), std::string::npos) << what;
        EXPECT_NE(what.find("port " + std::to_string(p2)), std::string::npos) << what;
        EXPECT_GE(elapsed, 990);
        EXPECT_LT(elapsed, 1800);
        EXPECT_FALSE(c.is_open());
    });
}

TEST(connection, refused_connection_is_reported_at_once)
{
    run([]() -> awaitable<void> {
        // A port that was just free: bind, note it, close.
        unsigned short port;
        {
            asio::ip::tcp::acceptor a(co_await asio::this_coro::executor,
                                      {asio::ip::make_address("127.0.0.1"), 0});
            port = a.local_endpoint().port();
        }
        auto start = clock_type::now();
        auto e = co_await expect_error([&]() -> awaitable<void> {
            co_await connected("postgresql://u:secret@127.0.0.1:" + std::to_string(port) + "/db");
        });
        EXPECT_EQ(e.code(), pgco::errc::cannot_connect) << e.what();
        EXPECT_NE(std::string(e.what()).find("P1001"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("refused"), std::string::npos) << e.what();
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_LT(ms_since(start), 1000);
    });
}

TEST(connection, sql_error_carries_sqlstate_and_connection_stays_usable)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.execute("SELECT * FROM no_such_table"); });
        EXPECT_EQ(e.code(), pgco::errc::server_error);
        EXPECT_EQ(e.sqlstate(), "42P01");
        EXPECT_NE(e.server_message().find("no_such_table"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("42P01"), std::string::npos);
        EXPECT_FALSE(pgco::is_connection_error(e));
        EXPECT_TRUE(e.request_sent());
        EXPECT_EQ(co_await c.query_one<int>("SELECT 2"), 2);
    });
}

TEST(connection, constraint_violation_has_detail)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        co_await c.execute("CREATE TEMP TABLE u (id int PRIMARY KEY)");
        co_await c.execute("INSERT INTO u VALUES ($1)", 1);
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.execute("INSERT INTO u VALUES ($1)", 1); });
        EXPECT_EQ(e.sqlstate(), "23505");
        EXPECT_NE(e.detail().find("already exists"), std::string::npos) << e.detail();
    });
}

struct item
{
    std::int32_t id;
    std::string name;
    std::optional<double> price;
    bool active;
};

TEST(connection, maps_rows_to_structs_and_counts_affected_rows)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        co_await c.execute(
            "CREATE TEMP TABLE items (id int, name text, price float8, active bool)");
        auto inserted = co_await c.execute(
            "INSERT INTO items VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)", 1, "pen", 1.5, true, 2,
            std::string("ink"), std::optional<double>{}, false);
        EXPECT_EQ(inserted, 2u);
        auto rows = co_await c.query<item>("SELECT id, name, price, active FROM items ORDER BY id");
        EXPECT_EQ(rows.size(), 2u);
        if (rows.size() == 2) {
            EXPECT_EQ(rows[0].id, 1);
            EXPECT_EQ(rows[0].name, "pen");
            EXPECT_EQ(rows[0].price, 1.5);
            EXPECT_TRUE(rows[0].active);
            EXPECT_EQ(rows[1].name, "ink");
            EXPECT_FALSE(rows[1].price.has_value());
            EXPECT_FALSE(rows[1].active);
        }
        auto ids = co_await c.query<std::int64_t>("SELECT id FROM items ORDER BY id");
        EXPECT_EQ(ids, (std::vector<std::int64_t>{1, 2}));
        EXPECT_EQ(co_await c.execute("UPDATE items SET active = true"), 2u);
        auto none = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query_one<int>("SELECT id FROM items WHERE id = $1", 42);
        });
        EXPECT_EQ(none.code(), pgco::errc::no_rows);
    });
}

TEST(connection, null_handling)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        EXPECT_EQ(co_await c.query_one<std::optional<int>>("SELECT NULL::int"), std::nullopt);
        EXPECT_EQ(co_await c.query_one<std::optional<int>>("SELECT 7"), 7);
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.query_one<int>("SELECT NULL::int AS n"); });
        EXPECT_EQ(e.code(), pgco::errc::unexpected_null);
        EXPECT_NE(std::string(e.what()).find("'n'"), std::string::npos) << e.what();
        // NULL parameters, typed and untyped
        EXPECT_EQ(co_await c.query_one<std::optional<std::string>>("SELECT $1::text",
                                                                   std::optional<std::string>{}),
                  std::nullopt);
        EXPECT_EQ(co_await c.query_one<bool>("SELECT $1::int IS NULL", std::nullopt), true);
        EXPECT_EQ(co_await c.query_one<std::optional<std::int64_t>>("SELECT $1",
                                                                    std::optional<std::int64_t>{}),
                  std::nullopt);
    });
}

template <class T>
awaitable<void> expect_round_trip(pgco::connection& c, std::string_view cast, const T& value)
{
    std::string sql = "SELECT $1::" + std::string(cast);
    auto back = co_await c.query_one<T>(sql, value);
    EXPECT_EQ(back, value) << "through " << cast;
}

TEST(connection, every_parameter_type_round_trips)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        co_await expect_round_trip<std::int16_t>(c, "int2", -32768);
        co_await expect_round_trip<std::int32_t>(c, "int4", std::numeric_limits<int>::max());
        co_await expect_round_trip<std::int64_t>(c, "int8",
                                                 std::numeric_limits<std::int64_t>::min());
        co_await expect_round_trip<std::uint32_t>(c, "int8", 4'000'000'000u);
        co_await expect_round_trip(c, "float8", 0.1);
        co_await expect_round_trip(c, "float8", -1e300);
        co_await expect_round_trip(c, "float8", std::numeric_limits<double>::infinity());
        co_await expect_round_trip(c, "float4", 3.25f);
        co_await expect_round_trip(c, "bool", true);
        co_await expect_round_trip(c, "bool", false);
        co_await expect_round_trip(c, "text", std::string("O'Reilly \"quoted\" ünïcødé ✓"));
        co_await expect_round_trip(c, "text", std::string());
        co_await expect_round_trip(c, "text", std::string("'); DROP TABLE items; --"));
        co_await expect_round_trip(c, "int4", std::optional<int>(5));
        co_await expect_round_trip(c, "text", std::optional<std::string>());
        pgco::bytes blob{std::byte{0}, std::byte{1}, std::byte{0x7f}, std::byte{0xff},
                         std::byte{0}};
        co_await expect_round_trip(c, "bytea", blob);
        co_await expect_round_trip(c, "bytea", pgco::bytes{});

        auto nan = co_await c.query_one<double>("SELECT $1::float8",
                                                std::numeric_limits<double>::quiet_NaN());
        EXPECT_TRUE(std::isnan(nan));
        std::string_view view = "a view, not NUL-terminated";
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT $1::text", view.substr(0, 6)),
                  "a view");
        const char* cstr = "c string";
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT $1", cstr), "c string");
        // Untyped text parameters take the type the statement needs.
        EXPECT_EQ(co_await c.query_one<std::string>("SELECT ($1::date + 1)::text", "2024-02-28"),
                  "2024-02-29");
        // Typed integer parameters compare with other integer widths.
        EXPECT_EQ(co_await c.query_one<bool>("SELECT 5::int2 = $1", std::int64_t{5}), true);

        auto bad = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query_one<std::string>("SELECT $1", std::string("nul\0byte", 8));
        });
        EXPECT_EQ(bad.code(), pgco::errc::invalid_parameter);
        EXPECT_NE(std::string(bad.what()).find("$1"), std::string::npos);
        EXPECT_FALSE(bad.request_sent());
    });
}

struct two_fields
{
    int a;
    int b;
};

TEST(connection, row_shape_mismatches_are_clear_errors)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto count = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query<two_fields>("SELECT 1 AS a, 2 AS b, 3 AS c");
        });
        EXPECT_EQ(count.code(), pgco::errc::column_count_mismatch);
        EXPECT_NE(std::string(count.what()).find("3 column"), std::string::npos) << count.what();

        auto type = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query<two_fields>("SELECT 1 AS a, 'x'::text AS label");
        });
        EXPECT_EQ(type.code(), pgco::errc::type_mismatch);
        EXPECT_NE(std::string(type.what()).find("'label'"), std::string::npos) << type.what();
        EXPECT_NE(std::string(type.what()).find("text"), std::string::npos) << type.what();

        auto range = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query_one<std::int16_t>("SELECT 70000 AS big");
        });
        EXPECT_EQ(range.code(), pgco::errc::invalid_value);
        EXPECT_NE(std::string(range.what()).find("'big'"), std::string::npos) << range.what();

        auto frac = co_await expect_error([&]() -> awaitable<void> {
            co_await c.query_one<int>("SELECT 1.5::numeric AS ratio");
        });
        EXPECT_EQ(frac.code(), pgco::errc::invalid_value);

        auto scalar = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.query<int>("SELECT 1, 2"); });
        EXPECT_EQ(scalar.code(), pgco::errc::column_count_mismatch);
        // The connection is fine after decoding errors.
        EXPECT_EQ(co_await c.query_one<int>("SELECT 3"), 3);
    });
}

TEST(connection, cancellation_returns_promptly_and_connection_stays_usable)
{
    using namespace asio::experimental::awaitable_operators;
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        asio::steady_timer timer(co_await asio::this_coro::executor, 200ms);
        auto start = clock_type::now();
        auto winner = co_await (c.query_one<std::string>("SELECT pg_sleep(10)::text") ||
                                timer.async_wait(asio::use_awaitable));
        EXPECT_EQ(winner.index(), 1u); // the timer won, the query was cancelled
        EXPECT_LT(ms_since(start), 1000);

        // The next query waits for what is left of the cancelled one, which the server
        // stopped: it finishes in far less than the 10 s the sleep would have taken.
        start = clock_type::now();
        EXPECT_EQ(co_await c.query_one<int>("SELECT 41 + 1"), 42);
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_TRUE(c.is_open());
    });
}

TEST(connection, query_after_close_and_concurrent_use_are_errors)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        c.close();
        EXPECT_FALSE(c.is_open());
        auto closed =
            co_await expect_error([&]() -> awaitable<void> { co_await c.execute("SELECT 1"); });
        EXPECT_EQ(closed.code(), pgco::errc::connection_closed);

        pgco::connection never(co_await asio::this_coro::executor);
        auto unopened =
            co_await expect_error([&]() -> awaitable<void> { co_await never.execute("SELECT 1"); });
        EXPECT_EQ(unopened.code(), pgco::errc::connection_closed);

        co_await c.connect(database_url());
        auto ex = co_await asio::this_coro::executor;
        bool first_done = false;
        asio::co_spawn(
            ex,
            [&]() -> awaitable<void> {
                co_await c.execute("SELECT pg_sleep(0.2)");
                first_done = true;
            },
            asio::detached);
        co_await asio::post(ex, asio::use_awaitable); // let it send its query
        auto both =
            co_await expect_error([&]() -> awaitable<void> { co_await c.execute("SELECT 1"); });
        asio::steady_timer wait(ex, 1s);
        while (!first_done && wait.expiry() > clock_type::now())
            co_await asio::post(ex, asio::use_awaitable);
        EXPECT_TRUE(first_done);
        EXPECT_EQ(both.code(), pgco::errc::connection_busy);
    });
}

TEST(connection, terminated_backend_is_a_connection_error)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto admin = co_await connected();
        EXPECT_TRUE(
            co_await admin.query_one<bool>("SELECT pg_terminate_backend($1)", c.backend_pid()));
        co_await asio::steady_timer(co_await asio::this_coro::executor, 100ms)
            .async_wait(asio::use_awaitable);
        auto e =
            co_await expect_error([&]() -> awaitable<void> { co_await c.execute("SELECT 1"); });
        EXPECT_TRUE(pgco::is_connection_error(e)) << e.what();
        EXPECT_EQ(e.code(), pgco::errc::connection_lost) << e.what();
        EXPECT_NE(std::string(e.what()).find("P1017"), std::string::npos) << e.what();
        EXPECT_FALSE(c.is_open());
    });
}

TEST(connection, a_read_right_after_the_send_that_meets_the_end_of_the_link_reports_it_at_once)
{
    // A read made right after a send (src/early_read.hpp) may be the one that finds the server
    // gone. libpq then holds the error and may have closed the socket already, so the statement
    // must end with that error instead of waiting on the socket. Deterministic: the proxy
    // closes the link while the connection is idle, and a fresh read policy makes the next
    // send read at once (as the first send of a connection does).
    run(
        []() -> awaitable<void> {
            pgco::test::fault_proxy proxy("127.0.0.1", server_port());
            auto c = co_await connected(pgco::test::url_via_port(proxy.port()));
            for (int i = 0; i < 3; ++i) // a few, so that the policy has a usual send time
                EXPECT_EQ(co_await c.query_one<int>("SELECT 1"), 1);
            proxy.cut_all(); // in effect on return: the client reads end-of-file
            auto& impl = pgco::detail::impl_of(c);
            impl.read_policy = pgco::detail::early_read{};
            auto start = clock_type::now();
            auto e = co_await expect_error(
                [&]() -> awaitable<void> { co_await c.query_one<int>("SELECT 1"); });
            EXPECT_LT(ms_since(start), 2000);
            EXPECT_EQ(e.code(), pgco::errc::connection_lost) << e.what();
            EXPECT_NE(std::string(e.what()).find("P1017"), std::string::npos) << e.what();
            EXPECT_FALSE(c.is_open());
            // The policy timed that send, and a fresh policy answers its first with "read at
            // once": the read that met the end was the early one.
            EXPECT_GT(impl.read_policy.quick().count(), 0);
        },
        10s);
}

namespace {

/// Has `admin` terminate backend `pid` 200 ms from now, while the caller's query runs.
void terminate_later(pgco::connection& admin, int pid, const asio::any_io_executor& ex)
{
    asio::co_spawn(
        ex,
        [&admin, pid, ex]() -> awaitable<void> {
            co_await asio::steady_timer(ex, 200ms).async_wait(asio::use_awaitable);
            co_await admin.execute("SELECT pg_terminate_backend($1)", pid);
        },
        asio::detached);
}

} // namespace

TEST(connection, backend_killed_mid_query_reports_the_request_as_sent)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto admin = co_await connected();
        auto ex = co_await asio::this_coro::executor;
        auto pid = c.backend_pid();
        terminate_later(admin, pid, ex);
        auto start = clock_type::now();
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.execute("SELECT pg_sleep(10)"); });
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_EQ(e.code(), pgco::errc::connection_lost) << e.what();
        EXPECT_EQ(e.sqlstate(), "57P01") << e.what(); // the server said why before closing
        EXPECT_TRUE(e.request_sent());
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_FALSE(c.is_open());
        // The same object connects again.
        co_await c.connect(database_url());
        EXPECT_EQ(co_await c.query_one<int>("SELECT 5"), 5);
    });
}

TEST(connection, unix_socket_and_key_value_strings)
{
    const char* state = std::getenv("PGCO_SANDBOX_STATE");
    ASSERT_TRUE(state) << "needs the sandbox fixture (PGCO_SANDBOX_STATE)";
    std::ifstream socket_file(std::string(state) + "/socketdir");
    std::ifstream port_file(std::string(state) + "/port");
    std::string socket_dir, port;
    ASSERT_TRUE(std::getline(socket_file, socket_dir));
    ASSERT_TRUE(std::getline(port_file, port));
    run([&]() -> awaitable<void> {
        // No name lookup for a socket path; local connections use trust authentication here.
        auto local = co_await connected("host=" + socket_dir + " port=" + port +
                                        " user=pgco dbname=pgco connect_timeout=5");
        EXPECT_EQ(
            co_await local.query_one<std::optional<std::string>>("SELECT inet_client_addr()::text"),
            std::nullopt); // NULL: not a TCP connection
        auto tcp = co_await connected("host=127.0.0.1 port=" + port + " user=pgco dbname=pgco " +
                                      "password='" + pgco::test::database_password() + "'");
        EXPECT_EQ(co_await tcp.query_one<std::string>("SELECT inet_client_addr()::text"),
                  "127.0.0.1/32");
    });
}

TEST(connection, query_timeout_closes_the_connection_and_says_so)
{
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        c.set_query_timeout(300ms);
        EXPECT_EQ(co_await c.query_one<int>("SELECT 1"), 1); // fast queries are unaffected
        auto start = clock_type::now();
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.execute("SELECT pg_sleep(5)"); });
        auto elapsed = ms_since(start);
        EXPECT_EQ(e.code(), pgco::errc::query_timeout) << e.what();
        EXPECT_NE(std::string(e.what()).find("P1008"), std::string::npos);
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_TRUE(pgco::maybe_applied(e)); // it was running: its outcome is unknown
        EXPECT_GE(elapsed, 290);
        EXPECT_LT(elapsed, 1500);
        EXPECT_FALSE(c.is_open());
    });
}

namespace {

/// What a result shows, field by field, for comparing the same batch's results on two paths.
std::vector<std::string> snapshot(const pgco::result& r)
{
    std::vector<std::string> out{"status " + std::string(r.command_status()),
                                 "affected " + std::to_string(r.rows_affected()),
                                 "rows " + std::to_string(r.size())};
    for (std::size_t c = 0; c < r.columns(); ++c)
        out.push_back("column " + std::string(r.column_name(c)) + " " +
                      std::to_string(r.column_type(c)) + (r.is_binary(c) ? " binary" : " text"));
    for (std::size_t row = 0; row < r.size(); ++row)
        for (std::size_t c = 0; c < r.columns(); ++c)
            out.push_back(r.is_null(row, c) ? "NULL" : "'" + std::string(r.value(row, c)) + "'");
    return out;
}

/// The table the wire tests fill: a column of each common kind, and one for NULLs.
std::string wire_table(const std::string& table)
{
    return "CREATE TABLE " + table +
           " (id int PRIMARY KEY, name text, score float8, flag bool, note text)";
}

std::string wire_insert(const std::string& table)
{
    return "INSERT INTO " + table + " (id, name, score, flag, note) VALUES ($1, $2, $3, $4, $5)";
}

} // namespace

TEST(connection, a_batch_of_known_statements_goes_on_the_wire_with_results_equal_to_libpqs)
{
    // The first run prepares and describes through libpq; the second, with every statement
    // known, is written and read by pgco itself (src/wire.hpp). The batch leaves nothing
    // behind, so both runs must give the very same results.
    const std::string table = "wire_" + std::to_string(::getpid());
    run(
        [&]() -> awaitable<void> {
            auto c = co_await connected();
            co_await c.exec(wire_table(table));
            const std::string insert = wire_insert(table);
            auto make = [&] {
                pgco::batch b;
                b.add(insert, 1, std::string("one"), 1.5, true, std::optional<std::string>("n"))
                    .add(insert, 2, std::string(""), -2.25, false, std::optional<std::string>())
                    .add("SELECT id, name, score, flag, note FROM " + table + " ORDER BY id")
                    .add("SELECT g, g * 2 AS twice FROM generate_series(1, $1) AS g", 100)
                    .add("UPDATE " + table + " SET score = score + 1 WHERE id = $1 RETURNING id", 1)
                    .add("SELECT id FROM " + table + " WHERE id < $1", 0)
                    .add("SELECT repeat($1, 60000) AS big", std::string("ab"))
                    .add("DELETE FROM " + table + " WHERE id IN (1, 2)");
                return b;
            };
            auto& impl = pgco::detail::impl_of(c);
            auto first_batch = make();
            auto first = co_await c.pipeline(first_batch);
            EXPECT_EQ(impl.wire_requests, 0u); // statements seen for the first time: libpq's
            auto second_batch = make();
            auto second = co_await c.pipeline(second_batch);
            EXPECT_EQ(impl.wire_requests, 1u);
            EXPECT_EQ(first.size(), 8u);
            EXPECT_EQ(second.size(), 8u);
            for (std::size_t i = 0; i < first.size() && i < second.size(); ++i)
                EXPECT_EQ(snapshot(first[i]), snapshot(second[i])) << "statement " << i + 1;
            if (second.size() == 8u) {
                EXPECT_EQ(second[0].command_status(), "INSERT 0 1");
                EXPECT_EQ(second[2].get<std::optional<std::string>>(1, 4), std::nullopt);
                EXPECT_EQ(second[2].get<double>(1, 2), -2.25);
                EXPECT_EQ(second[3].size(), 100u);
                EXPECT_EQ(second[3].get<int>(99, 1), 200);
                EXPECT_EQ(second[4].rows_affected(), 1u);
                EXPECT_EQ(second[6].get<std::string>(0, 0).size(), 120000u);
                EXPECT_EQ(second[7].rows_affected(), 2u);
            }
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            // And libpq takes the connection back where the batch left it.
            EXPECT_EQ(co_await c.query_one<std::int64_t>("SELECT count(*) FROM " + table), 0);
            co_await c.exec("DROP TABLE " + table);
        },
        20s);
}

TEST(connection, a_failing_statement_of_a_batch_on_the_wire_fails_alone_and_leaves_it_usable)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            auto make = [](int divisor) {
                pgco::batch b;
                b.add("SELECT 10 / $1", 1).add("SELECT 10 / $1", divisor).add("SELECT $1::int", 3);
                return b;
            };
            auto ok = make(2);
            EXPECT_EQ((co_await c.pipeline(ok)).size(), 3u); // prepares all three
            auto& impl = pgco::detail::impl_of(c);
            auto failing = make(0);
            auto e =
                co_await expect_error([&]() -> awaitable<void> { co_await c.pipeline(failing); });
            EXPECT_EQ(impl.wire_requests, 1u);
            EXPECT_EQ(e.code(), pgco::errc::server_error) << e.what();
            EXPECT_EQ(e.sqlstate(), "22012");
            EXPECT_NE(std::string(e.what()).find("division by zero"), std::string::npos)
                << e.what();
            EXPECT_NE(std::string(e.what()).find("statement 2 of the batch"), std::string::npos)
                << e.what();
            EXPECT_FALSE(pgco::maybe_applied(e));
            EXPECT_TRUE(c.is_open());
            auto again = make(5);
            auto results = co_await c.pipeline(again);
            EXPECT_EQ(impl.wire_requests, 2u);
            EXPECT_EQ(results.at(1).get<int>(0, 0), 2);
            EXPECT_EQ(results.at(2).get<int>(0, 0), 3);
        },
        10s);
}

TEST(connection, a_batch_on_the_wire_that_outlives_the_query_timeout_closes_the_connection)
{
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            auto make = [](double seconds) {
                pgco::batch b;
                b.add("SELECT pg_sleep($1)", seconds);
                return b;
            };
            auto quick = make(0);
            co_await c.pipeline(quick);
            c.set_query_timeout(200ms);
            auto slow = make(10);
            auto start = clock_type::now();
            auto e = co_await expect_error([&]() -> awaitable<void> { co_await c.pipeline(slow); });
            EXPECT_EQ(pgco::detail::impl_of(c).wire_requests, 1u);
            EXPECT_LT(ms_since(start), 5000);
            EXPECT_EQ(e.code(), pgco::errc::query_timeout) << e.what();
            EXPECT_FALSE(c.is_open());
        },
        20s);
}

namespace {

struct wire_row
{
    int id;
    std::string name;
    double score;
    bool flag;
    std::optional<std::string> note;
    bool operator==(const wire_row&) const = default;
};

} // namespace

TEST(connection, a_known_statement_goes_on_the_wire_with_results_equal_to_libpqs)
{
    // As for batches: the first run of each statement prepares it through libpq, the second
    // is written and read by pgco (src/wire.hpp), and both must give the same result, raw
    // (text) and decoded (binary where pgco asks for it).
    const std::string table = "wire_one_" + std::to_string(::getpid());
    run(
        [&]() -> awaitable<void> {
            auto c = co_await connected();
            co_await c.exec(wire_table(table));
            auto& impl = pgco::detail::impl_of(c);
            const std::string insert = wire_insert(table);
            const std::string select =
                "SELECT id, name, score, flag, note FROM " + table + " WHERE id >= $1 ORDER BY id";
            auto before = impl.wire_requests;
            EXPECT_EQ(co_await c.execute(insert, 1, std::string("one"), 1.5, true,
                                         std::optional<std::string>("n")),
                      1u);
            EXPECT_EQ(impl.wire_requests, before); // first sight: libpq's
            EXPECT_EQ(co_await c.execute(insert, 2, std::string(""), -2.25, false,
                                         std::optional<std::string>()),
                      1u);
            EXPECT_EQ(impl.wire_requests, before + 1);
            auto text_first = co_await c.exec(select, 0);
            auto text_second = co_await c.exec(select, 0);
            EXPECT_EQ(snapshot(text_first), snapshot(text_second));
            EXPECT_EQ(text_second.command_status(), "SELECT 2");
            auto rows_first = co_await c.query<wire_row>(select, 0);
            auto rows_second = co_await c.query<wire_row>(select, 0);
            EXPECT_EQ(rows_first, rows_second);
            EXPECT_EQ(rows_second.size(), 2u);
            if (rows_second.size() == 2u) {
                EXPECT_EQ(rows_second[1].note, std::nullopt);
                EXPECT_EQ(rows_second[1].name, "");
                EXPECT_EQ(rows_second[0].score, 1.5);
            }
            const std::string big = "SELECT repeat($1, $2) AS big";
            EXPECT_EQ((co_await c.query_one<std::string>(big, std::string("ab"), 10)).size(), 20u);
            EXPECT_EQ((co_await c.query_one<std::string>(big, std::string("ab"), 150000)).size(),
                      300000u); // larger than the first read's buffer
            EXPECT_EQ(co_await c.query_one<int>(
                          "SELECT count(*)::int FROM " + table + " WHERE id > $1", 5),
                      0);
            EXPECT_EQ(co_await c.query_one<int>(
                          "SELECT count(*)::int FROM " + table + " WHERE id > $1", 0),
                      2);
            // Rows of no columns: counted on the wire as libpq counts them.
            const std::string no_columns = "SELECT FROM generate_series(1, $1)";
            auto requests = impl.wire_requests;
            EXPECT_EQ((co_await c.exec(no_columns, 3)).size(), 3u); // prepared: libpq's path
            auto none = co_await c.exec(no_columns, 3);
            EXPECT_EQ(impl.wire_requests, requests + 1);
            EXPECT_EQ(none.size(), 3u);
            EXPECT_EQ(none.columns(), 0u);
            EXPECT_EQ(none.command_status(), "SELECT 3");
            EXPECT_EQ(co_await c.execute("DELETE FROM " + table + " WHERE id = $1", 1), 1u);
            EXPECT_EQ(co_await c.execute("DELETE FROM " + table + " WHERE id = $1", 2), 1u);
            auto e = co_await expect_error([&]() -> awaitable<void> {
                co_await c.execute(insert, 3, std::string("x"), 0.0, true,
                                   std::optional<std::string>());
                co_await c.execute(insert, 3, std::string("x"), 0.0, true,
                                   std::optional<std::string>());
            });
            EXPECT_EQ(e.sqlstate(), "23505") << e.what();
            EXPECT_FALSE(pgco::maybe_applied(e));
            EXPECT_TRUE(c.is_open());
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            EXPECT_GE(impl.wire_requests, before + 9);
            co_await c.exec("DROP TABLE " + table);
        },
        20s);
}

TEST(connection, notices_notifications_and_parameter_changes_on_the_wire_leave_it_usable)
{
    // What the server sends unasked around a statement's answer (a NOTICE, a notification to
    // this very session, a ParameterStatus for application_name) is read by pgco, not libpq:
    // the answer must still be right and the connection fit for the next statement.
    const std::string channel = "wire_ch_" + std::to_string(::getpid());
    run(
        [&]() -> awaitable<void> {
            auto c = co_await connected();
            co_await c.exec("LISTEN " + channel);
            co_await c.exec(
                "CREATE FUNCTION pg_temp.wire_noisy(v int) RETURNS int LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE NOTICE 'noisy %', v; PERFORM pg_notify('" +
                channel +
                "', v::text); PERFORM set_config('application_name', 'wire_' || v, false); "
                "RETURN v; END $$");
            auto& impl = pgco::detail::impl_of(c);
            auto before = impl.wire_requests;
            for (int i = 1; i <= 4; ++i)
                EXPECT_EQ(co_await c.query_one<int>("SELECT pg_temp.wire_noisy($1)", i), i);
            EXPECT_EQ(impl.wire_requests, before + 3);
            EXPECT_TRUE(c.is_open());
            EXPECT_FALSE(impl.doomed);
            EXPECT_EQ(c.transaction_status(), pgco::connection::transaction_state::idle);
            for (int i = 0; i < 2; ++i)
                EXPECT_EQ(co_await c.query_one<std::string>(
                              "SELECT current_setting('application_name') WHERE $1", true),
                          "wire_4");
        },
        10s);
}

TEST(connection, a_backend_killed_during_a_statement_on_the_wire_is_a_connection_error_not_applied)
{
    // As backend_killed_mid_query_reports_the_request_as_sent, but on the statement's second
    // run, which pgco reads itself (src/wire.hpp): the server's FATAL 57P01 and the end of the
    // link must give the same error libpq's path gives.
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto admin = co_await connected();
        auto ex = co_await asio::this_coro::executor;
        auto pid = c.backend_pid();
        co_await c.execute("SELECT pg_sleep($1)", 0.0); // prepares it
        auto& impl = pgco::detail::impl_of(c);
        auto before = impl.wire_requests;
        terminate_later(admin, pid, ex);
        auto start = clock_type::now();
        auto e = co_await expect_error(
            [&]() -> awaitable<void> { co_await c.execute("SELECT pg_sleep($1)", 10.0); });
        EXPECT_EQ(impl.wire_requests, before + 1);
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_EQ(e.code(), pgco::errc::connection_lost) << e.what();
        EXPECT_NE(std::string(e.what()).find("P1017"), std::string::npos) << e.what();
        EXPECT_EQ(e.sqlstate(), "57P01") << e.what();
        EXPECT_TRUE(e.request_sent());
        EXPECT_FALSE(pgco::maybe_applied(e)); // the server said it aborted the statement
        EXPECT_TRUE(pgco::is_connection_error(e));
        EXPECT_FALSE(c.is_open());
        co_await c.connect(database_url());
        EXPECT_EQ(co_await c.query_one<int>("SELECT 5"), 5);
    });
}

TEST(connection, a_cancelled_statement_or_batch_on_the_wire_leaves_the_connection_usable)
{
    // As cancellation_returns_promptly_and_connection_stays_usable, on the statement's second
    // run (read by pgco, src/wire.hpp): the next operation drops what is left of it.
    using namespace asio::experimental::awaitable_operators;
    run([]() -> awaitable<void> {
        auto c = co_await connected();
        auto ex = co_await asio::this_coro::executor;
        auto& impl = pgco::detail::impl_of(c);
        const std::string sleep = "SELECT pg_sleep($1)::text";
        co_await c.query_one<std::string>(sleep, 0.0); // prepares it
        auto before = impl.wire_requests;
        asio::steady_timer timer(ex, 200ms);
        auto start = clock_type::now();
        auto winner = co_await (c.query_one<std::string>(sleep, 10.0) ||
                                timer.async_wait(asio::use_awaitable));
        EXPECT_EQ(winner.index(), 1u);
        EXPECT_EQ(impl.wire_requests, before + 1);
        EXPECT_LT(ms_since(start), 1000);
        start = clock_type::now();
        EXPECT_EQ(co_await c.query_one<int>("SELECT 41 + $1", 1), 42);
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_TRUE(c.is_open());

        // The same for a batch.
        auto make = [&](double seconds) {
            pgco::batch b;
            b.add("SELECT $1::int", 1).add(sleep, seconds);
            return b;
        };
        auto quick = make(0);
        co_await c.pipeline(quick);
        before = impl.wire_requests;
        auto slow = make(10);
        asio::steady_timer timer2(ex, 200ms);
        start = clock_type::now();
        auto batch_winner = co_await (c.pipeline(slow) || timer2.async_wait(asio::use_awaitable));
        EXPECT_EQ(batch_winner.index(), 1u);
        EXPECT_EQ(impl.wire_requests, before + 1);
        start = clock_type::now();
        auto again = make(0);
        EXPECT_EQ((co_await c.pipeline(again)).size(), 2u);
        EXPECT_LT(ms_since(start), 2000);
        EXPECT_EQ(co_await c.query_one<int>("SELECT 41 + $1", 1), 42);
        EXPECT_TRUE(c.is_open());
        EXPECT_FALSE(impl.doomed);
    });
}

TEST(connection, a_request_on_the_wire_larger_than_the_socket_buffer_is_sent_whole)
{
    // A 16 MB parameter: the first send takes part of it, the rest waits for the socket to
    // drain (exec_params' loop for a statement alone, wire_write's for a batch).
    run(
        []() -> awaitable<void> {
            auto c = co_await connected();
            auto& impl = pgco::detail::impl_of(c);
            const std::string sql = "SELECT length($1)";
            const std::string big(16 << 20, 'x');
            EXPECT_EQ(co_await c.query_one<int>(sql, std::string("abc")), 3); // prepares it
            auto before = impl.wire_requests;
            EXPECT_EQ(co_await c.query_one<int>(sql, big), 16 << 20);
            EXPECT_EQ(impl.wire_requests, before + 1);
            pgco::batch b;
            b.add(sql, big).add(sql, std::string("de"));
            auto results = co_await c.pipeline(b);
            EXPECT_EQ(impl.wire_requests, before + 2);
            EXPECT_EQ(results.at(0).get<int>(0, 0), 16 << 20);
            EXPECT_EQ(results.at(1).get<int>(0, 0), 2);
            EXPECT_EQ(co_await c.query_one<int>(sql, std::string("abcd")), 4);
        },
        30s);
}

TEST(connection, a_result_read_on_the_wire_outlives_its_statement_and_its_connection)
{
    // Its column names and types are the prepared statement's (src/wire_rows.hpp): evicting
    // the statement from a cache of one, then closing the connection, must leave the result
    // whole (ASan would report a read of freed memory).
    run(
        []() -> awaitable<void> {
            auto c = co_await connected(pgco::test::url_with("statement_cache_size=1"));
            auto& impl = pgco::detail::impl_of(c);
            const std::string sql =
                "SELECT $1::int AS n, repeat('x', $1) AS xs, NULL::text AS none";
            co_await c.exec(sql, 3); // prepares and describes it
            auto before = impl.wire_requests;
            auto kept = co_await c.exec(sql, 4);
            EXPECT_EQ(impl.wire_requests, before + 1);
            pgco::batch b;
            b.add(sql, 5);
            auto batch = co_await c.pipeline(b);
            EXPECT_EQ(impl.wire_requests, before + 2);
            co_await c.exec("SELECT 1 AS other"); // the cache holds one: this evicts `sql`
            c.close();
            for (const pgco::result* r : {&kept, &batch.at(0)}) {
                EXPECT_EQ(r->columns(), 3u);
                if (r->columns() != 3u)
                    continue;
                EXPECT_EQ(r->column_name(0), "n");
                EXPECT_EQ(r->column_name(1), "xs");
                EXPECT_EQ(r->column_name(2), "none");
                EXPECT_EQ(r->column_type(0), pgco::oids::int4);
                EXPECT_TRUE(r->is_null(0, 2));
                EXPECT_EQ(r->command_status(), "SELECT 1");
            }
            EXPECT_EQ(kept.get<int>(0, 0), 4);
            EXPECT_EQ(kept.get<std::string>(0, 1), "xxxx");
            EXPECT_EQ(batch.at(0).get<std::string>(0, 1), "xxxxx");
        },
        20s);
}
