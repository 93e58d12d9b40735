#include "connect_workers.hpp"
#include "connection_impl.hpp"
#include "first_of.hpp"
#include "spare_vector.hpp"
#include "wire.hpp"

#include <pgco/batch.hpp>
#include <pgco/connection.hpp>
#include <pgco/log.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <libpq-fe.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <utility>

namespace asio = boost::asio;

namespace pgco {
namespace detail {

connection_impl& impl_of(connection& c) noexcept
{
    return *c.impl_;
}

std::shared_ptr<connection_impl> shared_impl_of(connection& c) noexcept
{
    return c.impl_;
}

} // namespace detail

namespace {

using detail::connection_impl;
using wait_type = connection_impl::wait_type;

// co_await of a deferred operation: Asio 1.81 keeps the result in the awaiting frame, where
// use_awaitable would allocate a coroutine frame of its own for every operation (176 bytes,
// and a third frame per statement defeats Asio's two-slot frame cache; see exec_params).
constexpr auto use_tuple = asio::as_tuple(asio::deferred);

struct busy_guard
{
    connection_impl& c;
    explicit busy_guard(connection_impl& impl) : c(impl) { c.busy = true; }
    ~busy_guard() { c.busy = false; }
    busy_guard(const busy_guard&) = delete;
};

std::string trimmed(const char* s)
{
    std::string out = s ? s : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
        out.pop_back();
    return out;
}

void ensure_usable(const std::shared_ptr<connection_impl>& c)
{
    if (!c || !c->conn)
        throw error(errc::connection_closed, "the connection is closed; connect it first");
    if (c->busy)
        throw error(errc::connection_busy,
                    "another operation is running on this connection; await it first");
}

// Notices go to the log. A FATAL one (57P01 when the backend is terminated, 57P02, an idle
// session timeout) arrives while no query runs, just before the server closes the socket:
// it condemns the connection at once.
void receive_notice(void* arg, const PGresult* notice)
{
    auto* c = static_cast<connection_impl*>(arg);
    std::string_view severity = PQresultErrorField(notice, PG_DIAG_SEVERITY_NONLOCALIZED)
                                    ? PQresultErrorField(notice, PG_DIAG_SEVERITY_NONLOCALIZED)
                                    : "";
    if (severity == "FATAL" || severity == "PANIC")
        c->doomed = true;
    auto l = logger();
    auto level = c->doomed ? spdlog::level::warn : spdlog::level::info;
    if (l->should_log(level))
        l->log(level, "server notice: {}", trimmed(PQresultErrorMessage(notice)));
}

// Notices while connecting are only logged: a connect step may still run on a worker after the
// loop gave up on it (see poll_off_loop), when its connection_impl may be gone.
void log_connect_notice(void*, const PGresult* notice)
{
    auto l = logger();
    if (l->should_log(spdlog::level::info))
        l->info("server notice: {}", trimmed(PQresultErrorMessage(notice)));
}

// libpq does not report a SQLSTATE for failures while connecting; these messages are the
// server's own for the conditions the retry layer cares about.
std::string sqlstate_of_connect_failure(std::string_view msg)
{
    auto has = [&](std::string_view s) { return msg.find(s) != std::string_view::npos; };
    if (has("too many clients") || has("remaining connection slots are reserved"))
        return "53300";
    if (has("the database system is starting up") || has("the database system is shutting down") ||
        has("the database system is in recovery mode") ||
        has("the database system is not yet accepting connections"))
        return "57P03";
    if (has("password authentication failed") || has("authentication failed"))
        return "28P01";
    if (has("no pg_hba.conf entry"))
        return "28000";
    if (has("database \"") && has("\" does not exist"))
        return "3D000";
    if (has("role \"") && has("\" does not exist"))
        return "28000";
    return {};
}

[[noreturn]] void throw_connect_failure(connection_impl& c, std::string why = {},
                                        bool needs_password = false)
{
    if (why.empty() && c.conn)
        why = trimmed(PQerrorMessage(c.conn));
    needs_password = needs_password || (c.conn && PQconnectionNeedsPassword(c.conn));
    c.close();
    std::string sqlstate = sqlstate_of_connect_failure(why);
    if (needs_password || sqlstate.starts_with("28")) {
        throw error(errc::authentication_failed,
                    "authentication failed for " + c.target + ": " + why, sqlstate, why, {}, {},
                    false);
    }
    if (!sqlstate.empty() && sqlstate != "57P03" && sqlstate != "53300") {
        throw error(errc::server_error,
                    "the database server at " + c.target + " refused the connection: " + why,
                    sqlstate, why, {}, {}, false);
    }
    throw error(errc::cannot_connect,
                "P1001: cannot reach the database server at " + c.target + ": " + why, sqlstate,
                why, {}, {}, false);
}

[[noreturn]] void throw_connection_lost(connection_impl& c, std::string why)
{
    if (why.empty() && c.conn)
        why = trimmed(PQerrorMessage(c.conn));
    bool sent = c.request_sent;
    c.close();
    throw error(errc::connection_lost, "P1017: server closed the connection: " + why, {}, why, {},
                {}, sent);
}

// PQcancel blocks until the server acknowledges, so it runs on a short-lived thread of its
// own. A detached thread rather than a pool: a server that never answers must not keep the
// application from exiting.
void request_cancel(PGconn* conn)
{
    PGcancel* cancel = PQgetCancel(conn);
    if (!cancel)
        return;
    std::thread([cancel] {
        char err[256];
        if (!PQcancel(cancel, err, sizeof err))
            logger()->warn("could not send the cancel request: {}", trimmed(err));
        PQfreeCancel(cancel);
    }).detach();
}

std::vector<std::string> split(std::string_view s)
{
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (;;) {
        auto comma = s.find(',', start);
        parts.emplace_back(s.substr(start, comma - start));
        if (comma == std::string_view::npos)
            return parts;
        start = comma + 1;
    }
}

std::string join(const std::vector<std::string>& parts)
{
    std::string out;
    for (std::size_t i = 0; i < parts.size(); ++i)
        out += (i ? "," : "") + parts[i];
    return out;
}

std::string env_or(const char* name, std::string fallback)
{
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : fallback;
}

struct conn_params
{
    std::vector<std::pair<std::string, std::string>> kv;

    std::string* find(std::string_view key)
    {
        for (auto& [k, v] : kv)
            if (k == key)
                return &v;
        return nullptr;
    }
    const std::string* find(std::string_view key) const
    {
        return const_cast<conn_params*>(this)->find(key);
    }
    std::string get(std::string_view key) const
    {
        auto* v = find(key);
        return v ? *v : std::string();
    }
    void set(std::string_view key, std::string value)
    {
        if (auto* v = find(key))
            *v = std::move(value);
        else
            kv.emplace_back(key, std::move(value));
    }
};

conn_params parse_conninfo(const std::string& conninfo)
{
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    if (!opts) {
        // libpq's message may quote part of the string, password included: leave it out.
        PQfreemem(err);
        throw error(errc::invalid_configuration,
                    "invalid connection string; build it with pool_options::from_url");
    }
    conn_params p;
    for (auto* o = opts; o->keyword; ++o) {
        // connect_timeout is pgco's to enforce: libpq ignores it in non-blocking mode.
        if (o->val && std::string_view(o->keyword) != "connect_timeout")
            p.kv.emplace_back(o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return p;
}

// Looks host names up through Asio (on its resolver thread) and hands libpq the addresses,
// so that PQconnectPoll never calls the blocking getaddrinfo on the event loop.
asio::awaitable<void> resolve_hosts(connection_impl& c, conn_params& p)
{
    std::string hostaddr = p.find("hostaddr") ? *p.find("hostaddr") : env_or("PGHOSTADDR", "");
    std::string host = p.find("host") ? *p.find("host") : env_or("PGHOST", "");
    if (!hostaddr.empty() || host.empty())
        co_return; // addresses given, or the default Unix socket
    std::string port = p.find("port") ? *p.find("port") : env_or("PGPORT", "");
    auto hosts = split(host);
    auto ports = port.empty() ? std::vector<std::string>{} : split(port);
    if (ports.size() > 1 && ports.size() != hosts.size())
        co_return; // libpq will report the mismatch itself

    std::vector<std::string> out_hosts, out_addrs, out_ports;
    std::string last_failure;
    asio::ip::tcp::resolver resolver(c.ex);
    for (std::size_t i = 0; i < hosts.size(); ++i) {
        const std::string& h = hosts[i];
        std::string pt = ports.empty() ? "" : ports.size() == 1 ? ports[0] : ports[i];
        boost::system::error_code ec;
        bool literal = !h.empty() && (asio::ip::make_address(h, ec), !ec);
        if (h.empty() || h[0] == '/' || h[0] == '@' || literal) {
            out_hosts.push_back(h);
            out_addrs.push_back(literal ? h : "");
            out_ports.push_back(pt);
            continue;
        }
        // Named, not a temporary inside the co_await: GCC 12 destroys conditional-expression
        // temporaries twice across a suspension.
        const std::string service = pt.empty() ? std::string("5432") : pt;
        auto [rec, endpoints] = co_await resolver.async_resolve(
            h, service, asio::ip::tcp::resolver::numeric_service, use_tuple);
        if (rec == asio::error::operation_aborted)
            throw error(errc::cancelled, "connecting was cancelled");
        if (rec) {
            last_failure =
                "could not translate host name \"" + h + "\" to address: " + rec.message();
            continue; // like libpq: try the next host
        }
        for (const auto& e : endpoints) {
            out_hosts.push_back(h);
            out_addrs.push_back(e.endpoint().address().to_string());
            out_ports.push_back(pt);
        }
    }
    if (out_hosts.empty())
        throw_connect_failure(c, last_failure);
    p.set("host", join(out_hosts));
    p.set("hostaddr", join(out_addrs));
    if (!port.empty())
        p.set("port", join(out_ports));
}

// PQconnectPoll never waits for the network, but one of its steps derives the scram-sha-256
// key (4096 rounds of PBKDF2, 2-3 ms of CPU here): on the event loop, a burst of reconnects
// would stall every other coroutine for tens of milliseconds. So every step runs on
// connect_workers (at a priority that yields to the loop); the PGconn is handed over and back,
// never shared.
//
// A step can also block (libpq reading a client certificate from a pipe, GSSAPI asking an
// unreachable KDC). The loop does not wait for it past the attempt's deadline or the caller's
// cancellation: it gives the step up, and the PGconn with it. Who decides is settled once:
// the worker finishing the step, or the loop giving up on it.
struct step_race
{
    enum outcome : int
    {
        running,
        finished,
        abandoned,
    };
    std::atomic<int> state{running};

    bool claim(outcome o) noexcept
    {
        int expected = running;
        return state.compare_exchange_strong(expected, o);
    }
};

/// Starts one PQconnectPoll on a worker; completes with `(error_code, status)`, or with
/// operation_aborted once cancelled (given up: the worker finishes the step and closes the
/// connection).
struct initiate_step
{
    PGconn* conn;
    std::shared_ptr<step_race> race;
    asio::any_io_executor ex; // the connection's: where the handler runs unless it says otherwise

    template <class Handler>
    void operator()(Handler handler) const
    {
        auto slot = asio::get_associated_cancellation_slot(handler);
        // Keeps the caller's executor busy meanwhile, so its run() does not return early.
        // (A parallel_group's handler names no executor in Boost 1.81: without the default it
        // would complete on the system executor's threads.)
        auto work = asio::make_work_guard(asio::get_associated_executor(handler, ex));
        // std::function wants a copyable job; the handler moves only.
        using state_type = std::pair<Handler, decltype(work)>;
        auto state = std::make_shared<state_type>(std::move(handler), std::move(work));
        // Called once, by whoever wins the race: the worker, or a cancellation handler in the
        // slot, whose closure may be destroyed as soon as the job is posted. So nothing of the
        // closure is touched after the post. The guard, taken out of it, lasts until post()
        // has returned: until then the executor's run() must not return, or the io_context
        // could be destroyed while post() is still signalling it. The slot is left alone: the
        // thread cancelling may still be inside it.
        auto complete = [](std::shared_ptr<state_type> s, boost::system::error_code ec,
                           PostgresPollingStatusType status) {
            auto work = std::move(s->second);
            asio::post(work.get_executor(), [s = std::move(s), ec, status]() mutable {
                auto handler = std::move(s->first);
                std::move(handler)(ec, status);
            });
        };
        // The slot's handler holds the state weakly: the state holds the caller's handler, and
        // through it the slot, so a strong reference would make a cycle that nothing breaks if
        // the completion is destroyed unrun (its io_context destroyed with it queued). Until
        // the step has finished, the worker's job holds the state.
        if (slot.is_connected())
            slot.assign([race = race, weak = std::weak_ptr(state),
                         complete](asio::cancellation_type) {
                if (!race->claim(step_race::abandoned))
                    return;
                if (auto s = weak.lock())
                    complete(std::move(s), asio::error::operation_aborted, PGRES_POLLING_FAILED);
                detail::connect_workers::instance().step_abandoned();
            });
        detail::connect_workers::instance().post([conn = conn, race = race, state, complete] {
            auto status = PQconnectPoll(conn);
            if (race->claim(step_race::finished)) {
                complete(state, {}, status);
            } else {
                PQfinish(conn); // given up on: no one else holds it any more
                detail::connect_workers::instance().abandoned_step_returned();
            }
        });
    }
};

/// One connect step on the workers, until `timer` expires if there is one. Returns its status,
/// or nothing if the timer expired first: the step was given up, and `c.conn` with it (the
/// worker closes it). Throws `cancelled` if the caller was.
asio::awaitable<std::optional<PostgresPollingStatusType>>
poll_off_loop(connection_impl& c, std::optional<asio::steady_timer>& timer)
{
    auto race = std::make_shared<step_race>();
    auto step = asio::async_initiate<const asio::deferred_t&,
                                     void(boost::system::error_code, PostgresPollingStatusType)>(
        initiate_step{c.conn, race, c.ex}, asio::deferred);
    boost::system::error_code ec;
    auto status = PGRES_POLLING_FAILED;
    bool timer_fired = false;
    if (timer) {
        auto [order, step_ec, step_status, timer_ec] =
            co_await detail::first_of(std::move(step), timer->async_wait(asio::deferred));
        ec = step_ec;
        status = step_status;
        timer_fired = order[0] == 1 && !timer_ec;
    } else {
        auto [step_ec, step_status] = co_await std::move(step)(use_tuple);
        ec = step_ec;
        status = step_status;
    }
    if (ec != asio::error::operation_aborted)
        co_return status; // finished, even if the deadline passed meanwhile
    c.conn = nullptr;     // the worker's now
    if (!timer_fired)
        throw error(errc::cancelled, "connecting was cancelled");
    logger()->debug("a connect step was still running at the attempt's deadline; left to "
                    "finish on its worker");
    co_return std::nullopt;
}

using connect_clock = std::chrono::steady_clock;

/// How one connect attempt ended.
enum class attempt_end
{
    connected,
    failed,    // c.conn is still open: its error message and state say why
    timed_out, // the attempt's deadline passed
};

/// libpq's connect steps for one set of parameters, until connected, failed or `deadline`.
asio::awaitable<attempt_end> connect_attempt(connection_impl& c, const conn_params& p,
                                             std::optional<connect_clock::time_point> deadline)
{
    std::vector<const char*> keys, values;
    for (auto& [k, v] : p.kv) {
        keys.push_back(k.c_str());
        values.push_back(v.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);

    c.conn = PQconnectStartParams(keys.data(), values.data(), 0);
    if (!c.conn)
        throw error(errc::client_failure, "libpq could not allocate a connection");
    if (PQstatus(c.conn) == CONNECTION_BAD)
        co_return attempt_end::failed;
    PQsetNoticeReceiver(c.conn, &log_connect_notice, nullptr);

    std::optional<asio::steady_timer> timer;
    if (deadline)
        timer.emplace(c.ex, *deadline);
    auto status = PGRES_POLLING_WRITING;
    while (status != PGRES_POLLING_OK) {
        if (status == PGRES_POLLING_FAILED || PQsocket(c.conn) < 0)
            co_return attempt_end::failed;
        // Re-read the socket each round: libpq opens a new one for each address it tries.
        c.assign_socket(PQsocket(c.conn));
        auto wait = status == PGRES_POLLING_READING ? wait_type::wait_read : wait_type::wait_write;
        boost::system::error_code ec;
        bool timed_out = false;
        if (timer) {
            auto [order, wait_ec, timer_ec] = co_await detail::first_of(
                c.sock.async_wait(wait, asio::deferred), timer->async_wait(asio::deferred));
            timed_out = order[0] == 1 && !timer_ec;
            ec = wait_ec;
        } else {
            auto [wait_ec] = co_await c.sock.async_wait(wait, use_tuple);
            ec = wait_ec;
        }
        c.release_socket();
        if (timed_out)
            co_return attempt_end::timed_out;
        if (ec == asio::error::operation_aborted)
            throw error(errc::cancelled, "connecting was cancelled");
        if (ec)
            throw_connect_failure(c, ec.message());
        auto step = co_await poll_off_loop(c, timer);
        if (!step)
            co_return attempt_end::timed_out;
        status = *step;
    }
    PQsetNoticeReceiver(c.conn, &receive_notice, &c);
    co_return attempt_end::connected;
}

/// One set of parameters per host (per address, after name lookup), in libpq's order; empty
/// when there is only one, when the lists do not match up (libpq then says why), or when part
/// of them comes from the environment (libpq then tries them all in one attempt).
std::vector<conn_params> per_host(const conn_params& p)
{
    // A list libpq would take from the environment (PGHOST, PGHOSTADDR, PGPORT) must stay
    // whole: split here, each attempt would pair one host with all of its entries. (A single
    // value applies to every host alike, split or not.)
    for (auto [key, env] : {std::pair{"host", "PGHOST"}, std::pair{"hostaddr", "PGHOSTADDR"},
                            std::pair{"port", "PGPORT"}})
        if (!p.find(key) && env_or(env, "").find(',') != std::string::npos)
            return {};
    auto list = [&](const char* key) {
        auto v = p.get(key);
        return v.empty() ? std::vector<std::string>{} : split(v);
    };
    auto hosts = list("host"), addrs = list("hostaddr"), ports = list("port");
    std::size_t n = std::max(hosts.size(), addrs.size());
    if (n <= 1 || (!hosts.empty() && hosts.size() != n) || (!addrs.empty() && addrs.size() != n) ||
        (ports.size() > 1 && ports.size() != n))
        return {};
    // In a list, an empty entry means libpq's default (port 5432, the default socket
    // directory); alone, an empty value means "unset", which the environment may fill. Ports
    // are spelled out; an empty host with PGHOST set stays with libpq.
    if (!env_or("PGHOST", "").empty() && std::ranges::count(hosts, std::string()) > 0)
        return {};
    std::vector<conn_params> out(n, p);
    for (std::size_t i = 0; i < n; ++i) {
        if (!hosts.empty())
            out[i].set("host", hosts[i]);
        if (!addrs.empty())
            out[i].set("hostaddr", addrs[i]);
        if (!ports.empty()) {
            auto port = ports.size() == 1 ? ports[0] : ports[i];
            out[i].set("port", port.empty() ? std::string("5432") : port); // DEF_PGPORT
        }
    }
    return out;
}

/// Says which host did not answer, the way libpq names the ones that failed.
std::string timed_out_message(const conn_params& host, const std::string& within)
{
    auto addr = host.get("hostaddr").empty() ? host.get("host") : host.get("hostaddr");
    auto port = host.get("port").empty() ? std::string("5432") : host.get("port");
    return "connection to server at \"" + addr + "\", port " + port + " failed: " + within;
}

[[noreturn]] void throw_connect_timeout(connection_impl& c, const std::string& what)
{
    c.close();
    throw error(errc::connect_timeout,
                "P1002: the database server at " + c.target + " was reached but timed out: " + what,
                {}, {}, {}, {}, false);
}

/// Connects `c` as `opts` says. connect_timeout bounds the name lookup and each host's attempt
/// separately, as libpq documents it: a host that never answers (a black-holed address after
/// a failover) costs that long, then the next host is tried. `overall` (a pool's deadline)
/// bounds them all.
asio::awaitable<void> connect_steps(std::shared_ptr<connection_impl> self, pool_options opts,
                                    std::optional<connect_clock::time_point> overall)
{
    connection_impl& c = *self;
    // An attempt ends at connect_timeout, or at the pool's deadline when that comes first; a
    // timed-out attempt says which.
    struct attempt_limit
    {
        std::optional<connect_clock::time_point> at;
        bool pool_first = false;
    };
    auto next_limit = [&] {
        attempt_limit l{overall, overall.has_value()};
        if (opts.connect_timeout.count() > 0) {
            auto own = connect_clock::now() + opts.connect_timeout;
            if (!l.at || own < *l.at)
                l = {own, false};
        }
        return l;
    };
    const std::string within =
        "no connection within " + std::to_string(opts.connect_timeout.count()) + " ms";
    auto why_timed_out = [&](const attempt_limit& l) {
        return l.pool_first ? std::string("the pool's deadline (pool_timeout) passed first")
                            : within;
    };

    conn_params p = parse_conninfo(opts.conninfo);
    if (auto d = next_limit().at) {
        asio::steady_timer t(c.ex, *d);
        auto [order, lookup_ex, timer_ec] =
            co_await detail::first_of(asio::co_spawn(c.ex, resolve_hosts(c, p), asio::deferred),
                                      t.async_wait(asio::deferred));
        if (order[0] == 1 && !timer_ec)
            throw_connect_timeout(c, "the host names were not looked up in time");
        if (lookup_ex)
            std::rethrow_exception(lookup_ex);
    } else {
        co_await resolve_hosts(c, p);
    }
    // Dead peers are noticed even on idle connections, unless the user chose otherwise.
    if (!p.find("keepalives"))
        p.set("keepalives", "1");
    if (!p.find("keepalives_idle"))
        p.set("keepalives_idle", "30");
    if (!p.find("keepalives_interval"))
        p.set("keepalives_interval", "10");
    if (!p.find("keepalives_count"))
        p.set("keepalives_count", "3");

    auto hosts = per_host(p);
    if (hosts.empty()) {
        auto limit = next_limit();
        auto end = co_await connect_attempt(c, p, limit.at);
        if (end == attempt_end::timed_out)
            throw_connect_timeout(c, why_timed_out(limit));
        if (end == attempt_end::failed)
            throw_connect_failure(c);
    } else {
        // One host at a time, each with its own deadline. prefer-standby is libpq's two
        // rounds: a standby anywhere, then any server.
        auto attrs = p.find("target_session_attrs") ? p.get("target_session_attrs")
                                                    : env_or("PGTARGETSESSIONATTRS", "");
        std::vector<std::string> rounds{attrs};
        if (attrs == "prefer-standby")
            rounds = {"standby", "any"};
        std::string failures;
        bool needs_password = false, all_timed_out = true, connected = false;
        for (const auto& round : rounds) {
            for (auto& host : hosts) {
                if (overall && connect_clock::now() >= *overall)
                    break;
                if (!round.empty())
                    host.set("target_session_attrs", round);
                auto limit = next_limit();
                auto end = co_await connect_attempt(c, host, limit.at);
                if (end == attempt_end::connected) {
                    connected = true;
                    break;
                }
                std::string why = end == attempt_end::timed_out
                                      ? timed_out_message(host, why_timed_out(limit))
                                      : trimmed(PQerrorMessage(c.conn));
                failures += (failures.empty() ? "" : "; ") + why;
                needs_password = needs_password || (c.conn && PQconnectionNeedsPassword(c.conn));
                all_timed_out = all_timed_out && end == attempt_end::timed_out;
                c.close();
            }
            if (connected)
                break;
        }
        if (!connected) {
            if (failures.empty())
                throw_connect_timeout(c, "no host was tried before the pool's deadline");
            if (all_timed_out)
                throw_connect_timeout(c, failures);
            throw_connect_failure(c, failures, needs_password);
        }
    }
    if (PQsetnonblocking(c.conn, 1) != 0)
        throw_connect_failure(c);
    c.assign_socket(PQsocket(c.conn));
    c.plain_socket = !PQsslInUse(c.conn) && !PQgssEncInUse(c.conn);
}

// Why the last wait for the server ended early, if it did.
struct io_failure
{
    boost::system::error_code ec;
    bool timed_out = false;
    std::string lost; // libpq's message when the link broke

    explicit operator bool() const noexcept { return ec || timed_out || !lost.empty(); }
};

// Sends what libpq still buffers.
asio::awaitable<void> flush_output(connection_impl& c, std::optional<asio::steady_timer>& deadline,
                                   io_failure& f)
{
    try {
        for (int r; (r = PQflush(c.conn)) != 0;) {
            if (r < 0) {
                f.lost = trimmed(PQerrorMessage(c.conn));
                co_return;
            }
            // Waits for writability are rare (a request larger than the socket buffer). A
            // short timer makes PQflush try again now and then as well, a cheap guard against
            // a wake-up that never comes.
            if (deadline && deadline->expiry() <= asio::steady_timer::clock_type::now()) {
                f.timed_out = true;
                co_return;
            }
            asio::steady_timer nudge(c.ex, std::chrono::milliseconds(20));
            auto [order, ec, timer_ec] =
                co_await detail::first_of(c.sock.async_wait(wait_type::wait_write, asio::deferred),
                                          nudge.async_wait(asio::deferred));
            if (order[0] == 1 && !timer_ec)
                ec = {}; // the nudge: just try again
            if (ec || !c.conn) {
                f.ec = ec ? ec : asio::error::operation_aborted;
                co_return;
            }
            if (!PQconsumeInput(c.conn)) {
                f.lost = trimmed(PQerrorMessage(c.conn));
                co_return;
            }
        }
    } catch (const boost::system::system_error& e) {
        // co_await throws instead of waiting when cancellation was requested in between.
        f.ec = e.code();
    }
}

struct wire_progress;
void wire_input(connection_impl& c, boost::system::error_code ec, wire_progress& w, io_failure& f);

// Waits until the server sent something (or the deadline passed) and hands it to libpq, or
// with `wire`, appends it to c.wire_in for pgco to parse (see wire.hpp).
// `fresh`: nothing was read since the request was sent on an idle connection, so all that is
// awaited is new input (see edge_wait.hpp).
asio::awaitable<void> read_input(connection_impl& c, std::optional<asio::steady_timer>& deadline,
                                 io_failure& f, bool fresh = false, wire_progress* wire = nullptr)
{
    try {
        boost::system::error_code ec;
        if (deadline) {
            auto [order, read_ec, timer_ec] = co_await detail::first_of(
                c.async_wait_input(fresh, asio::deferred), deadline->async_wait(asio::deferred));
            if (order[0] == 1 && !timer_ec) {
                f.timed_out = true;
                co_return;
            }
            ec = read_ec;
        } else {
            auto [read_ec] = co_await c.async_wait_input(fresh, use_tuple);
            ec = read_ec;
        }
        if (wire) {
            wire_input(c, ec, *wire, f);
            co_return;
        }
        if (detail::readable_anyway(ec))
            ec = {}; // libpq reads the EOF or error and reports it
        if (ec || !c.conn) {
            f.ec = ec ? ec : asio::error::operation_aborted;
            co_return;
        }
        // On failure libpq may still hold the server's last error (57P01, say): read it.
        if (!PQconsumeInput(c.conn) && PQisBusy(c.conn))
            f.lost = trimmed(PQerrorMessage(c.conn));
    } catch (const boost::system::system_error& e) {
        f.ec = e.code();
    }
}

std::optional<asio::steady_timer> make_deadline(connection_impl& c)
{
    // Only with a query timeout does each wait race a timer: without one, a wait costs no
    // timer at all.
    std::optional<asio::steady_timer> deadline;
    if (c.query_timeout.count() > 0)
        deadline.emplace(c.ex, c.query_timeout);
    return deadline;
}

// Turns a failed wait into the error the caller sees. A cancelled request leaves the
// connection usable when `recoverable`: the next operation discards its results.
[[noreturn]] void throw_io_failure(connection_impl& c, const io_failure& f, bool recoverable)
{
    if (f.timed_out && c.conn) {
        request_cancel(c.conn);
        bool sent = c.request_sent;
        c.close();
        throw error(errc::query_timeout,
                    "P1008: the query did not complete within " +
                        std::to_string(c.query_timeout.count()) + " ms; the connection was closed",
                    {}, {}, {}, {}, sent);
    }
    if (!c.conn)
        throw error(errc::connection_closed, "the connection was closed while a query was running",
                    {}, {}, {}, {}, c.request_sent);
    if (f.ec == asio::error::operation_aborted) {
        request_cancel(c.conn);
        bool sent = c.request_sent;
        if (recoverable)
            c.unfinished = true;
        else
            c.close();
        throw error(errc::cancelled, "the query was cancelled; the server was asked to stop it", {},
                    {}, {}, {}, sent);
    }
    if (f.ec)
        throw_connection_lost(c, f.ec.message());
    throw_connection_lost(c, f.lost);
}

// The error a failed statement's result describes.
error server_error_of(const PGresult* r, bool sent)
{
    auto field = [&](int code) { return trimmed(PQresultErrorField(r, code)); };
    std::string sqlstate = field(PG_DIAG_SQLSTATE);
    std::string primary = field(PG_DIAG_MESSAGE_PRIMARY);
    std::string detail = field(PG_DIAG_MESSAGE_DETAIL);
    std::string hint = field(PG_DIAG_MESSAGE_HINT);
    if (primary.empty())
        primary = trimmed(PQresultErrorMessage(r));
    std::string text = (sqlstate.empty() ? "" : sqlstate + ": ") + primary;
    if (!detail.empty())
        text += " (" + detail + ")";
    return error(errc::server_error, text, sqlstate, primary, detail, hint, sent);
}

// Sends what libpq still buffers, then reads every result of the current request. Returns the
// last result, or throws the first error. With `keep == false` results are discarded (used to
// finish a cancelled request).
/// What reading one request's results has collected so far.
struct request_state
{
    request_state(connection_impl& c, bool keep_result)
        : keep(keep_result), pipeline(PQpipelineStatus(c.conn) != PQ_PIPELINE_OFF)
    {}
    request_state(const request_state&) = delete;
    request_state& operator=(const request_state&) = delete;
    ~request_state() { PQclear(first_error); }

    bool keep;              // the caller wants the result (not a cancelled request's leftovers)
    bool pipeline;          // a cancelled pipeline (see run_pipeline) ends with its Sync
    bool flushed = false;   // all of the request reached the socket
    bool read_once = false; // the read right after sending was made
    bool fresh = false;     // sent on an idle connection, nothing read since (see read_input)
    bool completed = false; // the server reported the statement complete
    result last;
    PGresult* first_error = nullptr;
};

/// Takes every result libpq has ready, without waiting. True once the request is over.
bool take_ready_results(connection_impl& c, request_state& st)
{
    while (!PQisBusy(c.conn)) {
        PGresult* r = PQgetResult(c.conn);
        if (!r) {
            if (st.pipeline && PQstatus(c.conn) != CONNECTION_BAD)
                continue; // the end of one command's results
            return true;
        }
        switch (PQresultStatus(r)) {
        case PGRES_PIPELINE_SYNC:
            PQclear(r);
            PQexitPipelineMode(c.conn);
            return true;
        case PGRES_FATAL_ERROR:
            if (!st.first_error) {
                st.first_error = r;
                r = nullptr;
            }
            break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(r);
            c.close();
            throw error(errc::client_failure,
                        "COPY is not supported by pgco; the connection was closed");
        default:
            st.completed = true;
            if (st.keep) {
                st.last = result(r);
                r = nullptr;
            }
        }
        PQclear(r);
    }
    return false;
}

/// The outcome of a request that is over: its result, or the error the server reported.
result request_outcome(connection_impl& c, request_state& st)
{
    c.unfinished = false;
    std::unique_ptr<PGresult, decltype(&PQclear)> first_error(
        std::exchange(st.first_error, nullptr), &PQclear);
    if (first_error && !st.keep) {
        // The cancelled request's own error (57014) is expected; only a dead link matters.
        if (PQstatus(c.conn) == CONNECTION_BAD)
            throw_connection_lost(c, {});
        return std::move(st.last);
    }
    if (first_error) {
        error e = server_error_of(first_error.get(), c.request_sent);
        if (PQstatus(c.conn) == CONNECTION_BAD) {
            c.close();
            error lost(errc::connection_lost,
                       "P1017: server closed the connection: " + std::string(e.what()),
                       e.sqlstate(), e.server_message(), e.detail(), e.hint(), e.request_sent());
            // A server error without "complete" before it (57P01 instead of a result) means
            // the statement was aborted. With "complete" first, the commit at Sync may or may
            // not have happened before the session ended; and an error libpq made up itself
            // (no SQLSTATE: end of file, reset) means the answer was simply lost.
            lost.set_maybe_applied(e.request_sent() && (st.completed || e.sqlstate().empty()));
            throw lost;
        }
        throw e;
    }
    return std::move(st.last);
}

/// The common case without a coroutine frame: with the server on the same CPU the answer is
/// often there by the time the request is sent. Sends, reads once if `read_now` (see
/// early_read), and takes the results. True if that finished the request (then
/// `request_outcome` has it); otherwise, including on any failure, `complete_request` carries
/// on from where this stopped, waiting for input before it reads.
bool try_complete_now(connection_impl& c, request_state& st, bool read_now)
{
    if (PQflush(c.conn) != 0)
        return false;
    st.flushed = true;
    if (PQisBusy(c.conn)) {
        st.read_once = true; // made, or decided against
        if (!read_now) {
            st.fresh = true; // callers send on idle connections only
            return false;
        }
        if (!PQconsumeInput(c.conn))
            return false;
    }
    return take_ready_results(c, st);
}

/// Reads the results of the request just sent (or left unfinished by a cancellation), waiting
/// as needed; throws what went wrong.
asio::awaitable<result> complete_request(std::shared_ptr<connection_impl> self, request_state& st)
{
    connection_impl& c = *self;
    auto deadline = make_deadline(c);
    io_failure f;
    if (!st.flushed)
        co_await flush_output(c, deadline, f);
    // With the server on the same CPU the answer is often there already: one read by libpq
    // then saves registering a wait and epoll_wait.
    if (!f && st.keep && !st.read_once && PQisBusy(c.conn))
        PQconsumeInput(c.conn);
    while (!f) {
        if (take_ready_results(c, st))
            co_return request_outcome(c, st);
        co_await read_input(c, deadline, f, std::exchange(st.fresh, false));
    }
    throw_io_failure(c, f, true);
}

/// Reads what is left of a request cancelled earlier, so that the connection can be used.
asio::awaitable<void> finish_wire(std::shared_ptr<connection_impl> self);

asio::awaitable<void> finish_unfinished(std::shared_ptr<connection_impl> self)
{
    if (self->wire_unfinished) {
        co_await finish_wire(self);
        co_return;
    }
    request_state st(*self, false);
    co_await complete_request(self, st);
}

// The result columns a Describe reported.
void describe_columns(const PGresult* description, detail::cached_statement& st)
{
    auto n = static_cast<std::size_t>(PQnfields(description));
    auto shape = std::make_shared<detail::wire_shape>();
    shape->names.resize(n);
    shape->types.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        int f = static_cast<int>(i);
        shape->types[i] = PQftype(description, f);
        shape->names[i] = PQfname(description, f);
    }
    st.shape = std::move(shape);
}

int result_format(const detail::cached_statement& st, detail::binary_check binary)
{
    return binary && st.described && binary(st.shape->types.data(), st.shape->types.size()) ? 1 : 0;
}

// What a command of a pipeline was sent for.
struct pipeline_command
{
    enum kind_t
    {
        deallocate,
        prepare,
        describe,
        execute,
    } kind;
    detail::batch_entry* entry = nullptr;
    // The prepared statement a prepare or describe was for (short: no allocation); an execute
    // needs none once sent.
    std::string name;
    detail::cached_statement* statement = nullptr; // an execute's, when sent on the wire
    int format = 0;                                // and the format of its result columns
    PGresult* res = nullptr;
    detail::wire_rows* wired = nullptr; // its result, when read on the wire
    bool consumed = false;              // its result went to the entry's sink

    ~pipeline_command()
    {
        if (res) // most are taken or handed over: no call into libpq for nothing
            PQclear(res);
        if (wired)
            detail::wire_rows::destroy(wired);
    }
    // The result it ran to, for its caller.
    result take_result() noexcept
    {
        return wired ? result(std::exchange(wired, nullptr)) : result(std::exchange(res, nullptr));
    }
    pipeline_command(kind_t k, detail::batch_entry* e, std::string n)
        : kind(k), entry(e), name(std::move(n))
    {}
    pipeline_command(pipeline_command&& o) noexcept
        : kind(o.kind), entry(o.entry), name(std::move(o.name)), statement(o.statement),
          format(o.format), res(std::exchange(o.res, nullptr)),
          wired(std::exchange(o.wired, nullptr))
    {}
    pipeline_command(const pipeline_command&) = delete;
};

bool is_cache_invalidation(std::string_view sqlstate)
{
    // 26000: the prepared statement is gone (DEALLOCATE, DISCARD by someone else);
    // 0A000: "cached plan must not change result type" after a schema change.
    return sqlstate == "26000" || sqlstate == "0A000";
}

void fail_all(std::span<detail::batch_entry*> entries, const error& e)
{
    for (auto* entry : entries)
        entry->err = e;
}

// Room for `needed` commands, rounded up to a power of two within what the stock keeps: the
// buffer is recycled (spare_vector), and growing it by a command or two from one batch to the
// next would free the old one, a hole of several KB amid the blocks libpq allocates per
// result, which glibc then splits and merges for each of them. Larger buffers are not kept
// anyway.
void reserve_commands(std::vector<pipeline_command>& cmds, std::size_t needed)
{
    cmds.reserve(needed <= detail::spare_vector<pipeline_command>::kept ? std::bit_ceil(needed)
                                                                        : needed);
}

// Queues `entries` into libpq with one Sync (see run_pipeline). False if that failed: the
// connection is closed and every entry has its error.
bool send_pipeline(connection_impl& c, std::span<detail::batch_entry*> entries,
                   std::vector<pipeline_command>& cmds)
{
    reserve_commands(cmds, entries.size() + c.cache.evicted.size() + 2);
    auto send_failed = [&] {
        // Without the Sync nothing of it was committed; a dead connection rolls back the rest.
        std::string why = trimmed(PQerrorMessage(c.conn));
        c.close();
        fail_all(entries,
                 error(errc::connection_lost, "P1017: server closed the connection: " + why, {},
                       why, {}, {}, false));
        return false;
    };

    if (!PQenterPipelineMode(c.conn))
        return send_failed();
    for (auto& name : c.cache.evicted) {
        std::string sql = "DEALLOCATE " + name;
        if (!PQsendQueryParams(c.conn, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0))
            return send_failed();
        cmds.emplace_back(pipeline_command::deallocate, nullptr, std::string());
    }
    c.cache.evicted.clear();
    for (auto* e : entries) {
        e->res.reset();
        e->err.reset();
        e->consumed = false;
        e->rerun = false;
        const char* sql = e->key.data();
        const auto& p = e->params;
        int ok;
        // Only shareable statements are ever cached: a hit needs no second look at the text.
        auto it = c.cache.capacity > 0 ? c.cache.find(e->key) : c.cache.end();
        if (it != c.cache.end() ||
            (c.cache.capacity > 0 &&
             detail::shareable_statement(std::string_view(sql, e->sql_length)))) {
            if (it == c.cache.end()) {
                it = c.cache.add(std::string(e->key));
                if (!PQsendPrepare(c.conn, it->name.c_str(), sql, p.count, p.types) ||
                    !PQsendDescribePrepared(c.conn, it->name.c_str()))
                    return send_failed();
                cmds.emplace_back(pipeline_command::prepare, e, it->name);
                cmds.emplace_back(pipeline_command::describe, e, it->name);
            }
            int format = result_format(*it, e->binary);
            ok = PQsendQueryPrepared(c.conn, it->name.c_str(), p.count, p.values, p.lengths,
                                     p.formats, format);
            cmds.emplace_back(pipeline_command::execute, e, std::string());
        } else {
            ok =
                PQsendQueryParams(c.conn, sql, p.count, p.types, p.values, p.lengths, p.formats, 0);
            cmds.emplace_back(pipeline_command::execute, e, std::string());
        }
        if (!ok)
            return send_failed();
    }
    if (!PQpipelineSync(c.conn))
        return send_failed();
    c.request_sent = true;
    return true;
}

// Where a pipeline's results stand.
struct pipeline_progress
{
    std::size_t at = 0;          // the command whose results come next
    std::size_t first_error = 0; // the first command that failed (cmds.size(): none)
    bool synced = false;         // the Sync's result arrived: the batch is over
    bool fresh = false;          // nothing read yet from an idle connection (see read_input)
    io_failure f;
    std::optional<error> said; // on the wire: the error first_error's statement got
};

// Takes the results libpq holds, in order: each command's, then a null, and the Sync's at the
// end.
void take_pipeline_results(connection_impl& c, std::vector<pipeline_command>& cmds,
                           pipeline_progress& p)
{
    auto& [at, first_error, synced, fresh, f, said] = p;
    while (!PQisBusy(c.conn)) {
        PGresult* r = PQgetResult(c.conn);
        if (!r) {
            if (PQstatus(c.conn) == CONNECTION_BAD) {
                f.lost = trimmed(PQerrorMessage(c.conn));
                break;
            }
            ++at;
            continue;
        }
        auto status = PQresultStatus(r);
        if (status == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            synced = true;
            break;
        }
        if (at >= cmds.size()) { // more results than commands: not ours to interpret
            PQclear(r);
            f.lost = "unexpected results in the pipeline";
            break;
        }
        auto& cmd = cmds[at];
        if (status == PGRES_FATAL_ERROR && first_error == cmds.size())
            first_error = at;
        if (cmd.kind == pipeline_command::execute && cmd.entry->sink && !cmd.res && !cmd.consumed &&
            (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) &&
            PQntuples(r) <= detail::batch_entry::early_rows) {
            // Whether it counts is decided at the Sync, as for a kept result.
            result taken(r);
            cmd.entry->sink(cmd.entry->sink_ctx, taken);
            cmd.consumed = true;
            continue;
        }
        if (!cmd.res || PQresultStatus(cmd.res) != PGRES_FATAL_ERROR)
            std::swap(cmd.res, r);
        PQclear(r);
    }
}

// What became of each entry, once the batch is over (`p.synced`) or failed (`p.f`).
void conclude_pipeline(connection_impl& c, std::span<detail::batch_entry*> entries,
                       std::vector<pipeline_command>& cmds, pipeline_progress& p, bool started_idle,
                       bool recoverable)
{
    auto& [at, first_error, synced, fresh, f, wire_said] = p;

    // Prepared statements outlive a rolled-back transaction, so each Parse that succeeded
    // stays cached; the others are forgotten.
    for (auto& cmd : cmds) {
        if (cmd.kind != pipeline_command::prepare && cmd.kind != pipeline_command::describe)
            continue;
        auto it = c.cache.find(cmd.entry->key);
        if (it == c.cache.end() || it->name != cmd.name)
            continue;
        bool ok = cmd.res && PQresultStatus(cmd.res) == PGRES_COMMAND_OK;
        if (cmd.kind == pipeline_command::prepare) {
            if (ok)
                it->prepared = true;
            else if (!it->prepared)
                c.cache.erase(it);
        } else if (ok) {
            describe_columns(cmd.res, *it);
            it->described = true;
        }
    }

    if (!synced) {
        // The commit at the Sync never was confirmed. If the server said why it ended the
        // session (57P01...) before the Sync, it rolled everything back; if the link just
        // broke, the batch may have committed.
        const PGresult* said = first_error < cmds.size() ? cmds[first_error].res : nullptr;
        std::string sqlstate = wire_said ? std::string(wire_said->sqlstate())
                               : said    ? trimmed(PQresultErrorField(said, PG_DIAG_SQLSTATE))
                                         : "";
        if (f.timed_out || f.ec == asio::error::operation_aborted || !c.conn) {
            try {
                throw_io_failure(c, f, recoverable);
            } catch (const error& e) {
                fail_all(entries, e);
            }
            return;
        }
        std::string why = wire_said ? std::string(wire_said->what())
                          : said    ? std::string(server_error_of(said, true).what())
                                    : (f.ec ? f.ec.message() : f.lost);
        c.close();
        error lost(errc::connection_lost, "P1017: server closed the connection: " + why, sqlstate,
                   why, {}, {}, true);
        lost.set_maybe_applied(sqlstate.empty());
        fail_all(entries, lost);
        return;
    }
    PQexitPipelineMode(c.conn);

    if (first_error == cmds.size()) {
        for (auto& cmd : cmds) {
            if (cmd.kind != pipeline_command::execute)
                continue;
            if (cmd.consumed)
                cmd.entry->consumed = true;
            else
                cmd.entry->res.emplace(cmd.take_result());
        }
        return;
    }
    // One statement failed: the server skipped the rest and rolled back what ran before it in
    // the batch's implicit transaction. That one gets its error; the others had no effect and
    // run again.
    const auto& bad = cmds[first_error];
    error e = wire_said ? *wire_said : server_error_of(bad.res, true);
    e.set_maybe_applied(false);
    for (auto* entry : entries) {
        if (entry != bad.entry) {
            if (started_idle)
                entry->rerun = true;
            else
                entry->err = error(errc::server_error,
                                   "25P02: the statement was skipped: an earlier statement of "
                                   "the transaction failed",
                                   "25P02", {}, {}, {}, false);
            continue;
        }
        if (bad.kind == pipeline_command::execute && is_cache_invalidation(e.sqlstate()) &&
            started_idle && entry->reprepared == 0) {
            if (auto it = c.cache.find(entry->key); it != c.cache.end())
                c.cache.erase(it);
            ++entry->reprepared;
            entry->rerun = true;
            logger()->debug("Prepared statement invalidated ({}); preparing it again",
                            e.sqlstate());
            continue;
        }
        entry->err = e;
    }
    if (!bad.entry) { // a DEALLOCATE failed: nothing of the batch ran
        for (auto* entry : entries) {
            entry->rerun = started_idle;
            entry->err.reset();
            if (!started_idle)
                entry->err =
                    error(errc::server_error, "the batch was not run: " + std::string(e.what()),
                          e.sqlstate(), {}, {}, {}, false);
        }
    }
}

// ---- batches on the wire (see wire.hpp) ----

// Builds the messages of `entries` in c.wire_out and their commands in `cmds`, if the batch can
// go on the wire: a plain socket, libpq idle, and every statement prepared and described on
// this connection before. False, with `cmds` empty, if not: then libpq runs it.
bool wire_batch(connection_impl& c, std::span<detail::batch_entry*> entries,
                std::vector<pipeline_command>& cmds)
{
    if (!c.plain_socket || c.cache.capacity == 0 || !c.cache.evicted.empty() ||
        PQtransactionStatus(c.conn) != PQTRANS_IDLE || PQpipelineStatus(c.conn) != PQ_PIPELINE_OFF)
        return false;
    reserve_commands(cmds, entries.size());
    auto& out = c.wire_out;
    out.clear();
    for (auto* e : entries) {
        auto it = e->params.count <= 65535 ? c.cache.find(e->key) : c.cache.end();
        if (it == c.cache.end() || !it->prepared || !it->described) {
            cmds.clear();
            return false;
        }
        e->res.reset();
        e->err.reset();
        e->consumed = false;
        e->rerun = false;
        int format = result_format(*it, e->binary);
        detail::wire::put_bind(out, it->name, e->params, format);
        detail::wire::put_execute(out);
        auto& cmd = cmds.emplace_back(pipeline_command::execute, e, std::string());
        cmd.statement = &*it;
        cmd.format = format;
    }
    detail::wire::put_sync(out);
    return true;
}

// Sends c.wire_out. True if it went out in one call: the connection was idle, so all that can
// come next is new input (see read_input).
asio::awaitable<bool> wire_write(connection_impl& c, std::optional<asio::steady_timer>& deadline,
                                 io_failure& f)
{
    const int fd = PQsocket(c.conn);
    std::size_t off = 0;
    bool waited = false;
    try {
        for (;;) {
            auto n = ::send(fd, c.wire_out.data() + off, c.wire_out.size() - off,
                            MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                c.request_sent = true;
                off += static_cast<std::size_t>(n);
                if (off == c.wire_out.size())
                    co_return !waited;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                f.lost = std::string("could not send data to server: ") + std::strerror(errno);
                co_return false;
            }
            waited = true;
            boost::system::error_code ec;
            if (deadline) {
                auto [order, write_ec, timer_ec] = co_await detail::first_of(
                    c.sock.async_wait(wait_type::wait_write, asio::deferred),
                    deadline->async_wait(asio::deferred));
                if (order[0] == 1 && !timer_ec) {
                    f.timed_out = true;
                    co_return false;
                }
                ec = write_ec;
            } else {
                auto [write_ec] = co_await c.sock.async_wait(wait_type::wait_write, use_tuple);
                ec = write_ec;
            }
            if (ec || !c.conn) {
                f.ec = ec ? ec : asio::error::operation_aborted;
                co_return false;
            }
        }
    } catch (const boost::system::system_error& e) {
        f.ec = e.code();
    }
    co_return false;
}

// What reading a batch on the wire has collected besides pipeline_progress.
struct wire_progress
{
    std::uint32_t rows = 0; // rows of the statement whose answer is arriving, in c.wire_cells
    std::size_t have = 0;   // bytes of c.wire_in received and not parsed
    std::size_t need = 0;   // bytes the next message needs, when more than `have`
};

// Appends what the socket holds to c.wire_in, without waiting.
void wire_recv(connection_impl& c, wire_progress& w, io_failure& f)
{
    auto& in = c.wire_in;
    std::size_t want = std::max<std::size_t>(w.have + 16384, w.need);
    if (in.size() < want)
        in.resize(std::max(want, in.size() * 2));
    for (;;) {
        auto n = ::recv(PQsocket(c.conn), in.data() + w.have, in.size() - w.have, MSG_DONTWAIT);
        if (n > 0) {
            w.have += static_cast<std::size_t>(n);
        } else if (n == 0) {
            f.lost = "server closed the connection unexpectedly";
        } else if (errno == EINTR) {
            continue;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            f.lost = std::string("could not receive data from server: ") + std::strerror(errno);
        }
        break;
    }
}

// After a wait for input on a request on the wire: what arrived, appended to c.wire_in, or
// why the wait failed.
void wire_input(connection_impl& c, boost::system::error_code ec, wire_progress& w, io_failure& f)
{
    if (ec && detail::readable_anyway(ec))
        ec = {}; // recv reports the EOF or error
    if (ec || !c.conn)
        f.ec = ec ? ec : asio::error::operation_aborted;
    else
        wire_recv(c, w, f);
}

// Forgets the rows of a statement that did not complete.
void drop_wire_rows(connection_impl& c, wire_progress& w) noexcept
{
    w.rows = 0;
    c.wire_cells.clear();
    c.wire_values.clear();
}

// Adds the DataRow `body` to the rows of `cmd`'s statement. False if it does not fit the
// columns.
bool wire_row(connection_impl& c, pipeline_command& cmd, wire_progress& w, std::string_view body)
{
    std::size_t n = cmd.statement->shape->types.size();
    if (body.size() < 2 || detail::wire::get_u16(body.data()) != n || w.rows == UINT32_MAX)
        return false;
    auto& values = c.wire_values;
    std::size_t at = 2;
    for (std::size_t col = 0; col < n; ++col) {
        if (body.size() - at < 4)
            return false;
        auto len = detail::wire::get_u32(body.data() + at);
        at += 4;
        if (len == 0xffffffffu) {
            c.wire_cells.push_back({0, -1});
            continue;
        }
        // Offsets are 32 bits: a statement's values stop short of 4 GB, as libpq's do.
        if (len > body.size() - at || len > 0x7fffffffu ||
            values.size() + len + 1 > std::size_t{UINT32_MAX})
            return false;
        c.wire_cells.push_back(
            {static_cast<std::uint32_t>(values.size()), static_cast<std::int32_t>(len)});
        values.append(body.data() + at, len);
        values.push_back('\0');
        at += len;
    }
    ++w.rows;
    return at == body.size();
}

// The result of `cmd`'s statement, completed with the CommandComplete `body` (empty for an
// EmptyQueryResponse): the rows collected so far, copied into one block. Null if memory is
// short.
detail::wire_rows* complete_wire_rows(connection_impl& c, pipeline_command& cmd, wire_progress& w,
                                      std::string_view body)
{
    std::string_view tag;
    if (!body.empty() && body.back() == '\0')
        tag = body.substr(0, body.size() - 1);
    auto* r = detail::wire_rows::make(cmd.statement->shape, cmd.format == 1, w.rows, c.wire_cells,
                                      c.wire_values, tag);
    drop_wire_rows(c, w);
    return r;
}

// An ErrorResponse or NoticeResponse meant for libpq, which never sees it: logged like the
// notices libpq hands over, and a FATAL one condemns the connection.
void wire_notice(connection_impl& c, const detail::wire::error_fields& ef)
{
    if (ef.severity == "FATAL" || ef.severity == "PANIC")
        c.doomed = true;
    auto l = logger();
    auto level = c.doomed ? spdlog::level::warn : spdlog::level::info;
    if (l->should_log(level))
        l->log(level, "server notice: {}:  {}", ef.severity, ef.primary);
}

// Parses what arrived of a batch sent on the wire, as take_pipeline_results does with what
// libpq parsed: each statement's rows and completion (or its error), then ReadyForQuery.
void take_wire_results(connection_impl& c, std::span<pipeline_command> cmds, pipeline_progress& p,
                       wire_progress& w)
{
    if (w.have == 0) // an early read that found nothing
        return;
    std::string_view buf(c.wire_in.data(), w.have);
    std::size_t pos = 0;
    detail::wire::message m;
    bool bad = false;
    auto violation = [&](const char* what) {
        p.f.lost = std::string("protocol violation: ") + what + " (message type '" +
                   (std::isprint(static_cast<unsigned char>(m.type)) ? std::string(1, m.type)
                                                                     : std::string("?")) +
                   "')";
    };
    while (!p.f && detail::wire::next_message(buf, pos, m, w.need, bad)) {
        if (p.synced && m.type != 'A' && m.type != 'S' && m.type != 'N' && m.type != 'E') {
            // After ReadyForQuery only what the server sends unasked may come; the batch's
            // results stand, the connection is not reused.
            c.doomed = true;
            continue;
        }
        switch (m.type) {
        case '2': // BindComplete
        case 'A': // a notification: pool connections listen for none
        case 'S': // ParameterStatus: libpq's copy goes stale, and pgco reads none of them
            break;
        case 'D':
            if (p.first_error != cmds.size())
                break; // cannot come: the server skips to the Sync after an error
            if (p.at >= cmds.size() || !wire_row(c, cmds[p.at], w, m.body))
                violation("a row that fits no statement of the batch");
            break;
        case 'C':   // CommandComplete
        case 'I': { // EmptyQueryResponse
            if (p.at >= cmds.size()) {
                violation("more results than statements");
                break;
            }
            auto& cmd = cmds[p.at];
            auto* r = complete_wire_rows(c, cmd, w, m.type == 'C' ? m.body : std::string_view());
            if (!r) {
                p.f.lost = "out of memory for a result";
                break;
            }
            if (cmd.entry && cmd.entry->sink && !cmd.consumed &&
                r->rows <= detail::batch_entry::early_rows) {
                result taken(r);
                cmd.entry->sink(cmd.entry->sink_ctx, taken);
                cmd.consumed = true;
            } else {
                if (cmd.wired)
                    detail::wire_rows::destroy(cmd.wired);
                cmd.wired = r;
            }
            ++p.at;
            break;
        }
        case 'E':
        case 'N': {
            detail::wire::error_fields ef;
            if (!detail::wire::parse_error(m.body, ef)) {
                violation("a malformed error or notice");
                break;
            }
            if (m.type == 'N' || ef.severity == "FATAL" || ef.severity == "PANIC" || p.synced)
                wire_notice(c, ef); // after ReadyForQuery: the server's goodbye (57P01...)
            if (m.type == 'N' || p.first_error != cmds.size() || p.synced)
                break;
            if (p.at >= cmds.size()) { // at the Sync's commit: as libpq's path does
                p.f.lost = "unexpected results in the pipeline";
                break;
            }
            drop_wire_rows(c, w);
            p.first_error = p.at;
            std::string sqlstate(ef.sqlstate), primary(ef.primary), detail(ef.detail);
            std::string text = (sqlstate.empty() ? "" : sqlstate + ": ") + primary;
            if (!detail.empty())
                text += " (" + detail + ")";
            p.said.emplace(errc::server_error, text, sqlstate, primary, detail,
                           std::string(ef.hint), true);
            break;
        }
        case 'Z':
            p.synced = true;
            break;
        default:
            violation("a message pgco does not expect in a batch");
            break;
        }
    }
    if (bad)
        violation("a message length below 4");
    if (p.synced && pos != w.have) {
        // Part of a message the server sent unasked right after ReadyForQuery: libpq would
        // read the rest without its start, so the connection is not reused.
        c.doomed = true;
        pos = w.have;
    }
    // The unparsed rest to the front, for the next read to complete.
    if (pos != 0 && pos != w.have)
        std::memmove(c.wire_in.data(), c.wire_in.data() + pos, w.have - pos);
    w.have -= pos;
}

// A statement with a huge row or parameter does not leave its buffers to the connection.
void trim_wire_buffers(connection_impl& c)
{
    if (c.wire_unfinished) // its first bytes are still to be read
        return;
    constexpr std::size_t kept = 1 << 20;
    if (c.wire_in.size() > kept) {
        c.wire_in.clear();
        c.wire_in.shrink_to_fit();
    }
    if (c.wire_out.capacity() > kept) {
        c.wire_out.clear();
        c.wire_out.shrink_to_fit();
    }
    if (c.wire_values.capacity() > kept) {
        c.wire_values.clear();
        c.wire_values.shrink_to_fit();
    }
    if (c.wire_cells.capacity() * sizeof(detail::wire_rows::cell) > kept) {
        c.wire_cells.clear();
        c.wire_cells.shrink_to_fit();
    }
}

// After a failed wait for a request on the wire: whether it was a cancellation that leaves the
// connection usable (as `unfinished` does for libpq's requests). Only a request sent whole can
// be finished later: the next operation drops its answers up to ReadyForQuery
// (finish_unfinished), starting from the bytes already received.
bool wire_cancelled(connection_impl& c, const io_failure& f, const wire_progress& w,
                    bool sent_whole)
{
    if (f.ec != asio::error::operation_aborted || !c.conn || !sent_whole)
        return false;
    c.wire_unfinished = true;
    c.wire_pending = w.have;
    return true;
}

// Runs the batch wire_batch built, with the semantics of run_pipeline.
asio::awaitable<void> run_wire_pipeline(connection_impl& c, std::span<detail::batch_entry*> entries,
                                        std::vector<pipeline_command>& cmds, bool started_idle)
{
    pipeline_progress p;
    p.first_error = cmds.size();
    wire_progress w;
    drop_wire_rows(c, w); // what a request that failed midway may have left
    auto deadline = make_deadline(c);
    ++c.wire_requests;
    p.fresh = co_await wire_write(c, deadline, p.f);
    bool sent_whole = !p.f;
    while (!p.f) {
        take_wire_results(c, cmds, p, w);
        if (p.synced || p.f)
            break;
        co_await read_input(c, deadline, p.f, std::exchange(p.fresh, false), &w);
    }
    conclude_pipeline(c, entries, cmds, p, started_idle, wire_cancelled(c, p.f, w, sent_whole));
    trim_wire_buffers(c);
}

// Drops what is left of a cancelled request on the wire, up to its ReadyForQuery (the server
// was asked to stop it: 57014 then comes first). What follows ReadyForQuery is handled as
// after any answer (see take_wire_results).
bool drop_to_ready(connection_impl& c, wire_progress& w, io_failure& f)
{
    std::string_view buf(c.wire_in.data(), w.have);
    std::size_t pos = 0;
    detail::wire::message m;
    bool bad = false, ready = false;
    while (!ready && detail::wire::next_message(buf, pos, m, w.need, bad)) {
        detail::wire::error_fields ef;
        if ((m.type == 'E' || m.type == 'N') && detail::wire::parse_error(m.body, ef) &&
            (ef.severity == "FATAL" || ef.severity == "PANIC"))
            wire_notice(c, ef);
        ready = m.type == 'Z';
    }
    if (bad)
        f.lost = "protocol violation: a message length below 4";
    if (ready && pos != w.have)
        c.doomed = true; // something unasked after it: not libpq's to read any more
    if (ready)
        pos = w.have;
    if (pos != 0 && pos != w.have)
        std::memmove(c.wire_in.data(), c.wire_in.data() + pos, w.have - pos);
    w.have -= pos;
    return ready;
}

asio::awaitable<void> finish_wire(std::shared_ptr<connection_impl> self)
{
    connection_impl& c = *self;
    wire_progress w;
    w.have = std::exchange(c.wire_pending, 0);
    io_failure f;
    auto deadline = make_deadline(c);
    while (!drop_to_ready(c, w, f) && !f)
        co_await read_input(c, deadline, f, false, &w);
    if (f)
        throw_io_failure(c, f, false);
    c.wire_unfinished = false;
    c.unfinished = false;
}

// Runs `entries` in one pipeline with one Sync: statements seen before on this connection as
// named prepared statements, new ones prepared (and described) in the same round trip. The
// caller holds the connection exclusively. The work is in the functions above: only what
// lives across a wait is in this coroutine's frame, which stays small enough (≤ 1020 bytes)
// for Asio to recycle it rather than allocate one per batch.
asio::awaitable<void> run_pipeline(std::shared_ptr<connection_impl> self,
                                   std::span<detail::batch_entry*> entries)
{
    connection_impl& c = *self;
    c.request_sent = false;
    bool started_idle = PQtransactionStatus(c.conn) == PQTRANS_IDLE;
    detail::spare_vector<pipeline_command> cmds;
    if (wire_batch(c, entries, *cmds)) {
        co_await run_wire_pipeline(c, entries, *cmds, started_idle);
        co_return;
    }
    if (!send_pipeline(c, entries, *cmds))
        co_return;
    pipeline_progress p;
    p.first_error = cmds->size();
    auto deadline = make_deadline(c);
    // The connection was idle: until something is read, all that can come is new input.
    p.fresh = PQflush(c.conn) == 0;
    if (!p.fresh)
        co_await flush_output(c, deadline, p.f);
    while (!p.f) {
        take_pipeline_results(c, *cmds, p);
        if (p.synced || p.f)
            break;
        co_await read_input(c, deadline, p.f, std::exchange(p.fresh, false));
    }
    conclude_pipeline(c, entries, *cmds, p, started_idle, true);
}

} // namespace

namespace detail {

void check_sql_text(std::string_view sql)
{
    // libpq takes the text as a C string: it would silently run only what comes before the
    // NUL ("UPDATE t SET x = 1\0 WHERE id = 5" would update every row).
    if (auto at = sql.find('\0'); at != std::string_view::npos)
        throw error(errc::invalid_parameter,
                    "the SQL text contains a NUL byte at offset " + std::to_string(at) +
                        "; a PostgreSQL statement cannot contain one, and nothing was sent");
}

void statement_key(std::string& out, std::string_view sql, const params_view& params)
{
    out.assign(sql);
    out.push_back('\0');
    if (params.count > 0)
        out.append(reinterpret_cast<const char*>(params.types),
                   static_cast<std::size_t>(params.count) * sizeof(oid));
}

namespace {

// The first word of `sql` after blanks, opening parentheses and comments (`--` to the end of
// the line, `/* */` nested as PostgreSQL nests them); none if that word goes on as an
// identifier ("SELECT_1").
std::optional<std::string_view> first_word(std::string_view sql) noexcept
{
    const char* p = sql.data();
    const char* const end = p + sql.size();
    for (;;) { // blanks, parentheses and comments before the first word
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' ||
                           *p == '\v' || *p == '('))
            ++p;
        if (end - p < 2)
            break;
        if (p[0] == '-' && p[1] == '-') {
            while (p < end && *p != '\n')
                ++p;
        } else if (p[0] == '/' && p[1] == '*') {
            // Nested like PostgreSQL's: "/* a /* b */ BEGIN */ SELECT" starts with SELECT.
            int depth = 0;
            while (p < end) {
                if (end - p >= 2 && p[0] == '/' && p[1] == '*') {
                    ++depth;
                    p += 2;
                } else if (end - p >= 2 && p[0] == '*' && p[1] == '/') {
                    p += 2;
                    if (--depth == 0)
                        break;
                } else {
                    ++p;
                }
            }
        } else {
            break;
        }
    }
    const char* word = p;
    while (p < end && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        ++p;
    // An identifier goes on with digits, '_', '$' and non-ASCII bytes: "SELECT_1" is no keyword.
    if (p < end && ((*p >= '0' && *p <= '9') || *p == '_' || *p == '$' ||
                    static_cast<unsigned char>(*p) >= 0x80))
        return std::nullopt;
    return std::string_view(word, static_cast<std::size_t>(p - word));
}

// `word` is `keyword` (upper-case ASCII) in any case.
bool keyword_is(std::string_view word, std::string_view keyword) noexcept
{
    if (word.size() != keyword.size())
        return false;
    for (std::size_t k = 0; k < keyword.size(); ++k)
        if ((word[k] & ~0x20) != keyword[k]) // upper-cases ASCII letters
            return false;
    return true;
}

} // namespace

bool shareable_statement(std::string_view sql) noexcept
{
    // Runs for every statement: no locale (keywords are ASCII), and the common case, a
    // statement starting with a six-letter keyword, in one comparison per keyword.
    if (sql.size() >= 8) {
        auto key = [](const char(&k)[7]) {
            std::uint64_t v = 0;
            for (int i = 5; i >= 0; --i)
                v = v << 8 | static_cast<unsigned char>(k[i]);
            return v;
        };
        std::uint64_t head;
        std::memcpy(&head, sql.data(), 8);
        if constexpr (std::endian::native == std::endian::little) {
            auto six = head & 0x0000dfdfdfdfdfdf; // the first six bytes, letters upper-cased
            char next = sql[6];
            bool word_ends = next == ' ' || next == '\t' || next == '\n' || next == '\r' ||
                             next == '(' || next == '*' || next == '-' || next == '/';
            if (word_ends && (six == key("SELECT") || six == key("INSERT") ||
                              six == key("UPDATE") || six == key("DELETE") || six == key("VALUES")))
                return true;
        }
    }
    auto word = first_word(sql);
    if (!word)
        return false;
    auto is = [w = *word](std::string_view keyword) { return keyword_is(w, keyword); };
    switch (word->size()) {
    case 4:
        return is("WITH");
    case 5:
        return is("TABLE");
    case 6:
        return is("SELECT") || is("INSERT") || is("UPDATE") || is("DELETE") || is("VALUES");
    default:
        return false;
    }
}

asio::awaitable<void> run_batch(std::shared_ptr<connection_impl> self,
                                std::span<batch_entry*> entries)
{
    ensure_usable(self);
    busy_guard guard(*self);
    if (self->unfinished)
        co_await finish_unfinished(self);
    if (self->doomed)
        throw_connection_lost(*self, "the server terminated the session");
    co_await run_pipeline(self, entries);
}

} // namespace detail

connection::connection(executor_type ex) : impl_(std::make_shared<connection_impl>(std::move(ex)))
{}

connection::~connection()
{
    if (impl_)
        impl_->close();
}

connection::connection(connection&&) noexcept = default;

connection& connection::operator=(connection&& other) noexcept
{
    if (this != &other) {
        if (impl_)
            impl_->close();
        impl_ = std::move(other.impl_);
    }
    return *this;
}

connection::executor_type connection::get_executor() const noexcept
{
    return impl_->ex;
}

bool connection::is_open() const noexcept
{
    return impl_ && impl_->conn && PQstatus(impl_->conn) == CONNECTION_OK;
}

bool connection::request_sent() const noexcept
{
    return impl_ && impl_->request_sent;
}

connection::transaction_state connection::transaction_status() const noexcept
{
    if (!impl_ || !impl_->conn || impl_->busy)
        return transaction_state::unknown;
    switch (PQtransactionStatus(impl_->conn)) {
    case PQTRANS_IDLE:
        return transaction_state::idle;
    case PQTRANS_INTRANS:
        return transaction_state::in_transaction;
    case PQTRANS_INERROR:
        return transaction_state::failed;
    default:
        return transaction_state::unknown;
    }
}

void connection::set_query_timeout(std::chrono::milliseconds timeout) noexcept
{
    impl_->query_timeout = timeout;
}

int connection::backend_pid() const noexcept
{
    return impl_ && impl_->conn ? PQbackendPID(impl_->conn) : 0;
}

void connection::close() noexcept
{
    if (impl_)
        impl_->close();
}

asio::awaitable<void> connection::connect(pool_options opts)
{
    auto self = impl_;
    if (self->busy)
        throw error(errc::connection_busy, "another operation is running on this connection");
    self->close();
    busy_guard guard(*self);
    self->request_sent = false;
    self->target = opts.redacted();

    auto overall = std::exchange(self->connect_deadline, std::nullopt);
    try {
        co_await connect_steps(self, opts, overall);
    } catch (...) {
        self->close();
        throw;
    }
    self->cache.capacity = opts.pgbouncer ? 0 : opts.statement_cache_size;
    logger()->info("Database connected successfully: {} (server {}, backend pid {})", self->target,
                   PQserverVersion(self->conn), PQbackendPID(self->conn));
}

asio::awaitable<result> connection::exec_params(std::string_view sql, detail::params_view params)
{
    // Not a coroutine of its own: one frame fewer per statement.
    return exec_params(sql, params, nullptr);
}

namespace {

// After PQsendQueryPrepared or PQsendQueryParams: records the request as sent and returns
// whether to read at once (see early_read), or throws if nothing could be sent. Nothing then
// reached the server in a form it could run: without the closing Sync message an
// extended-protocol statement is never executed.
bool after_send(connection_impl& c, int sent, std::chrono::steady_clock::duration took)
{
    bool read_now = c.read_policy.after_send(took);
    if (!sent) {
        if (PQstatus(c.conn) == CONNECTION_BAD)
            throw_connection_lost(c, {});
        throw error(errc::client_failure,
                    "could not send the query: " + trimmed(PQerrorMessage(c.conn)));
    }
    c.request_sent = true;
    return read_now;
}

// Sends a statement the server knows as a named prepared statement: one Bind/Execute/Sync.
// Returns whether to read at once (see early_read); throws if nothing could be sent.
bool send_prepared(connection_impl& c, const detail::cached_statement& st,
                   const detail::params_view& params, detail::binary_check binary)
{
    int format = result_format(st, binary);
    auto send_start = std::chrono::steady_clock::now();
    int sent = PQsendQueryPrepared(c.conn, st.name.c_str(), params.count, params.values,
                                   params.lengths, params.formats, format);
    return after_send(c, sent, std::chrono::steady_clock::now() - send_start);
}

// Sends a statement as an unnamed one (the cache is off, or the statement is not shareable).
bool send_unnamed(connection_impl& c, std::string_view sql, const detail::params_view& params)
{
    c.sql.assign(sql);
    auto send_start = std::chrono::steady_clock::now();
    int sent = PQsendQueryParams(c.conn, c.sql.c_str(), params.count, params.types, params.values,
                                 params.lengths, params.formats, 0);
    return after_send(c, sent, std::chrono::steady_clock::now() - send_start);
}

// After a wait for input on a request: hands what arrived to libpq, or throws what went wrong.
void take_input_or_throw(connection_impl& c, boost::system::error_code ec)
{
    if (ec && detail::readable_anyway(ec))
        ec = {}; // libpq reads the EOF or error and reports it
    if (!ec && c.conn && (PQconsumeInput(c.conn) || !PQisBusy(c.conn)))
        return; // read; a failed read that left a result to take (57P01, say) is reported there
    io_failure f;
    if (ec || !c.conn)
        f.ec = ec ? ec : asio::error::operation_aborted;
    else
        f.lost = trimmed(PQerrorMessage(c.conn));
    throw_io_failure(c, f, true);
}

// First sight of a shareable statement on this connection (or after invalidation): Parse,
// Describe and Execute in one round trip. A coroutine of its own, so that its state does not
// weigh on the frame of every statement (see exec_params).
asio::awaitable<result> prepare_and_run(std::shared_ptr<connection_impl> self,
                                        std::size_t sql_length, detail::params_view params,
                                        detail::binary_check binary)
{
    detail::batch_entry entry;
    entry.key = self->sql;
    entry.sql_length = sql_length;
    entry.params = params;
    entry.binary = binary;
    detail::batch_entry* one[] = {&entry};
    for (int round = 0; round < 3; ++round) {
        co_await run_pipeline(self, one);
        if (entry.err)
            throw *entry.err;
        if (entry.res)
            co_return std::move(*entry.res);
    }
    throw error(errc::client_failure, "the statement could not be prepared");
}

// Whether a failed run of a cached statement only met a prepared statement the server no
// longer knows as cached (nothing ran): then it is forgotten, and c.sql holds its key for
// preparing it afresh.
bool stale_statement(connection_impl& c, const error& e, std::string_view sql,
                     const detail::params_view& params)
{
    if (e.code() != errc::server_error || !is_cache_invalidation(e.sqlstate()) || !c.conn ||
        PQtransactionStatus(c.conn) != PQTRANS_IDLE)
        return false;
    logger()->debug("Prepared statement invalidated ({}); preparing it again", e.sqlstate());
    detail::statement_key(c.sql, sql, params); // not kept current on the usual path
    if (auto it = c.cache.find(c.sql); it != c.cache.end())
        c.cache.erase(it);
    return true;
}

} // namespace

namespace detail {

struct wire_call
{
    pipeline_command cmd{pipeline_command::execute, nullptr, std::string()};
    pipeline_progress p;
    wire_progress w;

    void start(connection_impl& c, cached_statement& st, int format)
    {
        if (cmd.wired)
            wire_rows::destroy(std::exchange(cmd.wired, nullptr));
        cmd.consumed = false;
        cmd.statement = &st;
        cmd.format = format;
        // Field by field: assigning a fresh progress would build and destroy its error.
        p.at = 0;
        p.first_error = 1;
        p.synced = p.fresh = false;
        p.f.ec = {};
        p.f.timed_out = false;
        p.f.lost.clear();
        p.said.reset();
        drop_wire_rows(c, w);
        w.have = w.need = 0;
    }
};

void wire_call_deleter::operator()(wire_call* w) const noexcept
{
    delete w;
}

} // namespace detail

namespace {

// Whether exec_params may run `st` on the wire (see wire.hpp): prepared and described on a plain
// socket, with libpq idle, and no query timeout to race (the general path has the deadline).
bool wire_single(connection_impl& c, const detail::cached_statement& st,
                 const detail::params_view& params)
{
    return c.plain_socket && st.prepared && st.described && c.cache.evicted.empty() &&
           c.query_timeout.count() == 0 && params.count <= 65535 &&
           PQtransactionStatus(c.conn) == PQTRANS_IDLE;
}

// Sends Bind, Execute and Sync for `cmd`'s statement. Returns how much of c.wire_out went out
// (all of it but for a request larger than the socket's buffer) and, in `read_now`, whether to
// read at once (see early_read); throws if nothing could be sent.
std::size_t wire_send_single(connection_impl& c, pipeline_command& cmd,
                             const detail::params_view& params, bool& read_now)
{
    auto& out = c.wire_out;
    out.clear();
    detail::wire::put_bind(out, cmd.statement->name, params, cmd.format);
    detail::wire::put_execute(out);
    detail::wire::put_sync(out);
    auto send_start = std::chrono::steady_clock::now();
    ssize_t n;
    do
        n = ::send(PQsocket(c.conn), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    auto took = std::chrono::steady_clock::now() - send_start;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        throw_connection_lost(c, std::string("could not send data to server: ") +
                                     std::strerror(errno));
    std::size_t sent = n > 0 ? static_cast<std::size_t>(n) : 0;
    if (sent > 0)
        c.request_sent = true;
    ++c.wire_requests;
    read_now = c.read_policy.after_send(took);
    return sent;
}

// A statement run alone on the wire, once its answer is in (`p.synced`) or its wait failed: its
// result, or the error exec_params' libpq path would report.
result wire_single_outcome(connection_impl& c, pipeline_command& cmd, pipeline_progress& p,
                           const wire_progress& w, bool sent_whole)
{
    c.unfinished = false;
    if (p.synced) {
        trim_wire_buffers(c);
        if (p.said)
            throw *p.said;
        return cmd.take_result();
    }
    if (p.f.ec == asio::error::operation_aborted || !c.conn)
        throw_io_failure(c, p.f, wire_cancelled(c, p.f, w, sent_whole));
    std::string sqlstate = p.said ? std::string(p.said->sqlstate()) : "";
    std::string why = p.said ? std::string(p.said->what()) : p.f.ec ? p.f.ec.message() : p.f.lost;
    bool sent = c.request_sent;
    c.close();
    error lost(errc::connection_lost, "P1017: server closed the connection: " + why, sqlstate, why,
               {}, {}, sent);
    // As request_outcome: a SQLSTATE instead of a completion (57P01) means the statement was
    // aborted; a completion first, or a link that just broke, leaves the commit unknown.
    lost.set_maybe_applied(sent && (p.at > 0 || sqlstate.empty()));
    throw lost;
}

} // namespace

// The path of every statement, kept to one coroutine frame small enough (≤ 1020 bytes) for
// Asio to recycle: the wait for the answer is made here rather than in nested coroutines
// (each would cost a frame, and more than two frames per statement defeat Asio's two-slot
// frame cache, which then allocates every frame); rarer paths are coroutines of their own.
asio::awaitable<result> connection::exec_params(std::string_view sql, detail::params_view params,
                                                detail::binary_check binary)
{
    detail::check_sql_text(sql);
    auto self = impl_;
    ensure_usable(self);
    busy_guard guard(*self);
    if (self->unfinished)
        co_await finish_unfinished(self);

    self->request_sent = false;
    if (self->doomed) // the server said it is closing this session: nothing can reach it
        throw_connection_lost(*self, "the server terminated the session");

    connection_impl& c = *self;
    bool cached = c.cache.capacity > 0 && detail::shareable_statement(sql);
    bool read_now;
    if (cached) {
        // c.sql holds the key only where a path below needs it: the statement run last is
        // found without it.
        auto it = c.cache.find_recent(sql, params);
        bool keyed = it == c.cache.end();
        if (keyed) {
            detail::statement_key(c.sql, sql, params);
            it = c.cache.find(c.sql);
        }
        if (it == c.cache.end() || !it->prepared || !c.cache.evicted.empty()) {
            if (!keyed)
                detail::statement_key(c.sql, sql, params);
            co_return co_await prepare_and_run(self, sql.size(), params, binary);
        }
        if (wire_single(c, *it, params)) {
            // Bind, Execute and Sync written and read by pgco (see wire.hpp).
            if (!c.wire_single)
                c.wire_single.reset(new detail::wire_call);
            auto& call = *c.wire_single;
            call.start(c, *it, result_format(*it, binary));
            auto& [cmd, p, w] = call;
            std::size_t sent = wire_send_single(c, cmd, params, read_now);
            bool fresh = !read_now;
            while (sent < c.wire_out.size() && !p.f) { // larger than the socket's buffer
                fresh = false;
                try {
                    auto [ec] = co_await c.sock.async_wait(wait_type::wait_write, use_tuple);
                    if (ec || !c.conn)
                        p.f.ec = ec ? ec : asio::error::operation_aborted;
                } catch (const boost::system::system_error& e) {
                    p.f.ec = e.code();
                }
                if (p.f)
                    break;
                auto n = ::send(PQsocket(c.conn), c.wire_out.data() + sent,
                                c.wire_out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) {
                    sent += static_cast<std::size_t>(n);
                    c.request_sent = true;
                } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                    p.f.lost =
                        std::string("could not send data to server: ") + std::strerror(errno);
                }
            }
            if (read_now && !p.f)
                wire_recv(c, w, p.f);
            for (;;) {
                if (!p.f)
                    take_wire_results(c, std::span(&cmd, 1), p, w);
                if (p.synced || p.f)
                    break;
                try {
                    auto [ec] = co_await c.async_wait_input(std::exchange(fresh, false), use_tuple);
                    wire_input(c, ec, w, p.f);
                } catch (const boost::system::system_error& e) {
                    // co_await throws instead of waiting when cancellation was requested.
                    wire_input(c, e.code(), w, p.f);
                }
            }
            try {
                co_return wire_single_outcome(c, cmd, p, w, sent == c.wire_out.size());
            } catch (const error& e) {
                if (!stale_statement(c, e, sql, params))
                    throw;
            }
            co_return co_await prepare_and_run(self, sql.size(), params, binary);
        }
        read_now = send_prepared(c, *it, params, binary);
    } else {
        read_now = send_unnamed(c, sql, params);
    }

    bool stale = false;
    {
        request_state st(c, true);
        try {
            bool done = try_complete_now(c, st, read_now);
            if (!done && (!st.flushed || c.query_timeout.count() > 0)) {
                // A request still being sent, or a deadline to race: the general path.
                st.last = co_await complete_request(self, st);
            } else {
                // Results first, before any wait: a read that failed in try_complete_now left
                // libpq's error there, and its socket may be gone.
                while (!done && !take_ready_results(c, st)) {
                    try {
                        auto [ec] =
                            co_await c.async_wait_input(std::exchange(st.fresh, false), use_tuple);
                        take_input_or_throw(c, ec);
                    } catch (const boost::system::system_error& e) {
                        // co_await throws instead of waiting when cancellation was requested.
                        take_input_or_throw(c, e.code());
                    }
                }
                st.last = request_outcome(c, st);
            }
        } catch (const error& e) {
            if (!cached || !stale_statement(c, e, sql, params))
                throw;
            stale = true;
        }
        if (!stale) {
            if (!cached) {
                // Statements that drop every prepared statement of the session.
                auto tag = st.last.command_status();
                if (tag == "DISCARD ALL" || tag == "DEALLOCATE ALL")
                    c.cache.clear();
            }
            co_return std::move(st.last);
        }
    }
    co_return co_await prepare_and_run(self, sql.size(), params, binary);
}

asio::awaitable<std::vector<result>> connection::pipeline(batch& b)
{
    auto self = impl_;
    ensure_usable(self);
    busy_guard guard(*self);
    if (self->unfinished)
        co_await finish_unfinished(self);
    self->request_sent = false;
    if (self->doomed)
        throw_connection_lost(*self, "the server terminated the session");
    std::vector<result> results;
    if (b.empty())
        co_return results;

    auto statements = b.statements();
    std::vector<detail::batch_entry> storage(statements.size());
    std::vector<detail::batch_entry*> entries;
    entries.reserve(statements.size());
    for (std::size_t i = 0; i < statements.size(); ++i) {
        auto& e = storage[i];
        e.key = statements[i].key;
        e.sql_length = statements[i].sql_length;
        e.params = statements[i].view();
        entries.push_back(&e);
    }
    // Before any result exists, so that the vector's buffer is not allocated among (or above)
    // the blocks libpq allocates for them: glibc then reuses their memory more cheaply once
    // they are freed (W3 batches of 100 under callgrind: 5,977 -> 5,885 instructions each).
    results.reserve(storage.size());
    // A rerun without an error means nothing ran (a stale prepared statement was re-prepared):
    // the whole batch goes again.
    for (int round = 0; round < 3; ++round) {
        co_await run_pipeline(self, entries);
        for (std::size_t i = 0; i < storage.size(); ++i) {
            if (!storage[i].err)
                continue;
            const error& e = *storage[i].err;
            error named(static_cast<errc>(e.code().value()),
                        "statement " + std::to_string(i + 1) + " of the batch: " + e.what(),
                        e.sqlstate(), e.server_message(), e.detail(), e.hint(), e.request_sent());
            named.set_maybe_applied(e.maybe_applied());
            throw named;
        }
        bool again = false;
        for (auto& e : storage)
            again = again || e.rerun || !e.res;
        if (again)
            continue;
        for (auto& e : storage)
            results.push_back(std::move(*e.res));
        co_return results;
    }
    throw error(errc::client_failure, "the batch could not be prepared");
}

namespace detail {

void owned_statement::assign(std::string_view sql, const params_view& p)
{
    auto n = static_cast<std::size_t>(p.count);
    auto type_bytes = n * sizeof(oid);
    // A reused statement (a recycled multiplexing item) mostly gets the text it already holds:
    // then the key need not be built, nor the text checked, again.
    bool same = sql_length == sql.size() && key.size() == sql.size() + 1 + type_bytes &&
                std::memcmp(key.data(), sql.data(), sql.size()) == 0 &&
                (n == 0 || std::memcmp(key.data() + sql.size() + 1, p.types, type_bytes) == 0);
    if (!same) {
        check_sql_text(sql);
        statement_key(key, sql, p);
        sql_length = sql.size();
        types.assign(p.types, p.types + n);
    }
    if (values.size() != n) { // else (a reused item, the usual case) the sizes are right
        lengths.resize(n);
        formats.resize(n);
        values.resize(n); // resized, not reassigned: the strings keep their buffers
        pointers.resize(n);
    }
    for (std::size_t i = 0; i < n; ++i) {
        lengths[i] = p.lengths[i];
        formats[i] = p.formats[i];
        if (p.values[i] == nullptr) {
            values[i].clear();
            pointers[i] = nullptr;
            continue;
        }
        // Text parameters end at their NUL; binary ones have a length. resize + memcpy rather
        // than assign: the same length as last time (the usual case) costs no more than the copy.
        std::size_t len = p.formats[i] == 1 ? static_cast<std::size_t>(p.lengths[i])
                                            : std::char_traits<char>::length(p.values[i]);
        values[i].resize(len);
        std::memcpy(values[i].data(), p.values[i], len);
        pointers[i] = values[i].c_str();
    }
}

namespace {

using few_strings = owned_statement::few<std::string>;
using few_pointers = owned_statement::few<const char*>;

void point_into(const few_strings& values, few_pointers& pointers) noexcept
{
    for (std::size_t i = 0; i < values.size(); ++i)
        if (pointers[i])
            pointers[i] = values[i].c_str();
}

} // namespace

owned_statement::owned_statement(const owned_statement& other)
    : key(other.key), sql_length(other.sql_length), types(other.types), values(other.values),
      pointers(other.pointers), lengths(other.lengths), formats(other.formats)
{
    point_into(values, pointers);
}

owned_statement& owned_statement::operator=(const owned_statement& other)
{
    if (this != &other)
        *this = owned_statement(other);
    return *this;
}

owned_statement::owned_statement(owned_statement&& other) noexcept
    : key(std::move(other.key)), sql_length(other.sql_length), types(std::move(other.types)),
      values(std::move(other.values)), pointers(std::move(other.pointers)),
      lengths(std::move(other.lengths)), formats(std::move(other.formats))
{
    point_into(values, pointers);
}

owned_statement& owned_statement::operator=(owned_statement&& other) noexcept
{
    if (this != &other) {
        key = std::move(other.key);
        sql_length = other.sql_length;
        types = std::move(other.types);
        values = std::move(other.values);
        pointers = std::move(other.pointers);
        lengths = std::move(other.lengths);
        formats = std::move(other.formats);
        point_into(values, pointers);
    }
    return *this;
}

params_view owned_statement::view() const noexcept
{
    return {static_cast<int>(values.size()), types.data(), pointers.data(), lengths.data(),
            formats.data()};
}

} // namespace detail

} // namespace pgco
