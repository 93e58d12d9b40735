// Recovery benchmarks: how fast pgco heals after the server drops connections, and whether the
// event loop stays responsive while it does.
//
//   pgco_bench_recovery --url URL [--workload all|reconnect,restart,ticker]
//                       [--kills 200] [--reconnect-deadline 300]
//                       [--sandbox-script scripts/pg-sandbox --sandbox-state DIR]
//                       [--restarts 3] [--default-restarts 1] [--restart-workers 4]
//                       [--timeline-out FILE] [--storm-rounds 20] [--storm-interval-ms 100]
//
// reconnect: a pool with connection_limit=1 holds one idle connection; an admin connection runs
//   `SELECT pg_terminate_backend($1)` for its backend; t0 = when that returned, t1 = when the
//   next `pool.query_one<int>("SELECT 1")` returned (retries included). Alternated with fresh
//   connects (`connection::connect` + first `SELECT 1`) measured in the same run, so drift
//   affects both alike. Reports p50/p99 of both and the p50 ratio (target ≤ 1.5).
// restart: `--restart-workers` coroutines run `SELECT 1` in a loop through a pool while
//   `pg-sandbox restart` (pg_ctl restart -m fast) runs from a thread; another thread polls
//   the server with PQping every 1 ms to learn when it accepts connections again. Reports the
//   time from that moment to the first successful pgco query, and a timeline of successful
//   queries per 100 ms relative to the restart command. Runs with retry backoff 0,0.1,0.2 s
//   (`--restarts` times) and with the default 0,2,4 s (`--default-restarts` times).
// ticker: a coroutine on the pool's io_context ticks every 1 ms (steady_timer) and records how
//   late each wake-up is, first alone (bare: what the machine itself does to a 1 ms timer),
//   then while 32 coroutines query through a pool of 10 connections (quiet), then while every
//   pool backend is killed `--storm-rounds` times, 100 ms apart (storm). Reports worst and p99
//   lateness (target: no stall above 5 ms); own_worst_ms, the most lateness the process's own
//   CPU use can account for (its threads' CPU time between two wake-ups beyond the 1 ms
//   period); and, for comparison, the longest single PQconnectPoll call of raw libpq connects
//   (connect_poll_block): the stall each connect step would cause if run on the event loop
//   (pgco runs them on worker threads). A bystander thread of the same process (same CPU and
//   priority) sleeps 1 ms at a time through the same phases and reports its own lateness
//   (bystander_*): what the CPU gives a thread that has no work at all, the floor under the
//   ticker's numbers.
//
// Prints one JSON object per line, like pgco_bench. Everything runs on one thread's
// io_context (plus the helper threads named above); pin the process and the server to one
// CPU, as scripts/bench does.

#include <pgco/pgco.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <libpq-fe.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

using bench_clock = std::chrono::steady_clock;

double to_ms(bench_clock::duration d)
{
    return std::chrono::duration<double, std::milli>(d).count();
}

double cpu_now()
{
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/// Nearest-rank percentile (p in [0, 1]) of `v`; NaN when empty.
double percentile(std::vector<double> v, double p)
{
    if (v.empty())
        return std::nan("");
    std::sort(v.begin(), v.end());
    auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size())));
    rank = std::clamp<std::size_t>(rank, 1, v.size());
    return v[rank - 1];
}

/// The median (the mean of the middle two for an even count); NaN when empty.
double median(std::vector<double> v)
{
    if (v.empty())
        return std::nan("");
    std::sort(v.begin(), v.end());
    auto n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double maximum(const std::vector<double>& v)
{
    return v.empty() ? std::nan("") : *std::max_element(v.begin(), v.end());
}

double mean(const std::vector<double>& v)
{
    if (v.empty())
        return std::nan("");
    double s = 0;
    for (double x : v)
        s += x;
    return s / static_cast<double>(v.size());
}

/// A JSON number, or null for NaN (a value that could not be measured).
std::string num(double v, int decimals = 3)
{
    if (std::isnan(v) || std::isinf(v))
        return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

void emit(const std::string& line)
{
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

asio::awaitable<void> sleep_for(bench_clock::duration d)
{
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

asio::awaitable<void> sleep_until(bench_clock::time_point tp)
{
    asio::steady_timer t(co_await asio::this_coro::executor, tp);
    co_await t.async_wait(asio::use_awaitable);
}

std::string policy_name(const std::vector<std::chrono::milliseconds>& backoff)
{
    std::string s;
    for (auto b : backoff) {
        if (!s.empty())
            s += ',';
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", static_cast<double>(b.count()) / 1000.0);
        s += buf;
    }
    return s;
}

/// Adds a libpq parameter to a URL or key=value connection string.
std::string with_param(const std::string& url, const std::string& key, const std::string& value)
{
    if (url.rfind("postgres://", 0) == 0 || url.rfind("postgresql://", 0) == 0)
        return url + (url.find('?') == std::string::npos ? "?" : "&") + key + "=" + value;
    return url + " " + key + "=" + value;
}

/// Runs `body()` (a coroutine) on a fresh single-threaded io_context until all work is done.
template <class F>
void run_on_io(asio::io_context& io, F& body)
{
    std::exception_ptr failure;
    asio::co_spawn(io, body(), [&](std::exception_ptr e) {
        failure = e;
        if (e)
            io.stop(); // the pool's background work would keep run() going
    });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
}

/// Coroutines that can all be told to stop (terminal cancellation), and awaited.
class worker_group
{
public:
    explicit worker_group(asio::io_context& io) : io_(io) {}

    /// `make` must outlive the workers (lambda coroutines refer to their lambda object).
    template <class MakeAwaitable>
    void spawn(int n, MakeAwaitable& make)
    {
        for (int i = 0; i < n; ++i) {
            signals_.push_back(std::make_unique<asio::cancellation_signal>());
            ++live_;
            asio::co_spawn(
                io_, make(i),
                asio::bind_cancellation_slot(signals_.back()->slot(), [this](std::exception_ptr e) {
                    --live_;
                    if (e && !first_error_ && !stopping_)
                        first_error_ = e;
                }));
        }
    }

    /// Cancels every worker and waits up to `limit` for them to end. False if some did not.
    asio::awaitable<bool> cancel_and_wait(bench_clock::duration limit)
    {
        stopping_ = true;
        for (auto& s : signals_)
            s->emit(asio::cancellation_type::terminal);
        auto until = bench_clock::now() + limit;
        while (live_ > 0 && bench_clock::now() < until)
            co_await sleep_for(1ms);
        co_return live_ == 0;
    }

    /// Waits up to `limit` for every worker to end by itself.
    asio::awaitable<bool> wait(bench_clock::duration limit)
    {
        auto until = bench_clock::now() + limit;
        while (live_ > 0 && bench_clock::now() < until)
            co_await sleep_for(1ms);
        co_return live_ == 0;
    }

    int live() const { return live_; }

    /// Rethrows the first exception a worker ended with (other than cancellation).
    void rethrow_first_error() const
    {
        if (first_error_)
            std::rethrow_exception(first_error_);
    }

private:
    asio::io_context& io_;
    std::vector<std::unique_ptr<asio::cancellation_signal>> signals_;
    int live_ = 0;
    bool stopping_ = false;
    std::exception_ptr first_error_;
};

// ---- reconnect: backend kill -> next successful query, beside a fresh connect ----

struct reconnect_result
{
    std::vector<double> reconnect_ms, fresh_ms, reconnect_cpu_ms, fresh_cpu_ms;
    int failures = 0;       // queries after a kill that threw
    int kills_not_sent = 0; // pg_terminate_backend returned false
    int via_idle_watch = 0; // the pool had dropped the dead connection before the query
    int via_retry = 0;      // the query failed on the dead connection and was retried
    int via_acquire = 0;    // neither: acquire found the connection unfit and replaced it
    int deadline_hit = 0;
    pgco::pool_stats stats;
};

reconnect_result run_reconnect(const pgco::pool_options& base, int kills, int warmup,
                               std::chrono::seconds deadline)
{
    asio::io_context io(1);
    pgco::pool_options o = base;
    o.connection_limit = 1;
    pgco::pool pool(io.get_executor(), o);
    reconnect_result r;
    constexpr auto settle = 5ms; // before each measurement, so neither starts on the other's tail

    auto body = [&]() -> asio::awaitable<void> {
        pgco::connection admin(io.get_executor());
        co_await admin.connect(base);
        auto end = bench_clock::now() + deadline;
        for (int i = 0; i < warmup + kills; ++i) {
            if (bench_clock::now() >= end) {
                r.deadline_hit = 1;
                std::fprintf(
                    stderr, "bench_recovery: reconnect: deadline reached after %d iterations\n", i);
                break;
            }
            const bool measured = i >= warmup;

            // A fresh connection, as the pool would open one, and its first query.
            co_await sleep_for(settle);
            {
                double c0 = cpu_now();
                auto t0 = bench_clock::now();
                pgco::connection c(io.get_executor());
                co_await c.connect(base);
                int one = co_await c.query_one<int>("SELECT 1");
                auto t1 = bench_clock::now();
                double c1 = cpu_now();
                c.close();
                if (one != 1)
                    throw std::runtime_error("fresh connection returned a wrong value");
                if (measured) {
                    r.fresh_ms.push_back(to_ms(t1 - t0));
                    r.fresh_cpu_ms.push_back((c1 - c0) * 1e3);
                }
            }

            // Kill the pool's idle backend, then query through the pool.
            co_await sleep_for(settle);
            int pid = co_await pool.query_one<int>("SELECT pg_backend_pid()");
            auto before = pool.stats();
            bool sent = co_await admin.query_one<bool>("SELECT pg_terminate_backend($1)", pid);
            double c0 = cpu_now();
            auto t0 = bench_clock::now();
            if (!sent)
                ++r.kills_not_sent;
            try {
                int one = co_await pool.query_one<int>("SELECT 1");
                auto t1 = bench_clock::now();
                double c1 = cpu_now();
                if (one != 1)
                    throw std::runtime_error("pool returned a wrong value");
                auto after = pool.stats();
                if (after.query_retries > before.query_retries)
                    ++r.via_retry;
                else if (after.closed_by_server > before.closed_by_server)
                    ++r.via_idle_watch;
                else
                    ++r.via_acquire;
                if (measured) {
                    r.reconnect_ms.push_back(to_ms(t1 - t0));
                    r.reconnect_cpu_ms.push_back((c1 - c0) * 1e3);
                }
            } catch (const pgco::error& e) {
                if (r.failures++ < 5)
                    std::fprintf(stderr,
                                 "bench_recovery: reconnect: query after kill %d failed: %s\n", i,
                                 e.what());
            }
        }
        r.stats = pool.stats();
        admin.close();
        co_await pool.close(5s);
    };
    run_on_io(io, body);
    return r;
}

void report_reconnect(const reconnect_result& r, int kills)
{
    double rp50 = percentile(r.reconnect_ms, 0.5), rp99 = percentile(r.reconnect_ms, 0.99);
    double fp50 = percentile(r.fresh_ms, 0.5), fp99 = percentile(r.fresh_ms, 0.99);
    emit(R"({"workload":"reconnect","driver":"pgco","stat":"kill_to_query","n":)" +
         std::to_string(r.reconnect_ms.size()) + R"(,"p50_ms":)" + num(rp50) + R"(,"p99_ms":)" +
         num(rp99) + R"(,"max_ms":)" + num(maximum(r.reconnect_ms)) + R"(,"mean_ms":)" +
         num(mean(r.reconnect_ms)) + R"(,"cpu_p50_ms":)" +
         num(percentile(r.reconnect_cpu_ms, 0.5)) + R"(,"failures":)" + std::to_string(r.failures) +
         R"(,"via_idle_watch":)" + std::to_string(r.via_idle_watch) + R"(,"via_retry":)" +
         std::to_string(r.via_retry) + R"(,"via_acquire":)" + std::to_string(r.via_acquire) +
         R"(,"kills_not_sent":)" + std::to_string(r.kills_not_sent) + R"(,"kills_planned":)" +
         std::to_string(kills) + "}");
    emit(R"({"workload":"reconnect","driver":"pgco","stat":"fresh_connect","n":)" +
         std::to_string(r.fresh_ms.size()) + R"(,"p50_ms":)" + num(fp50) + R"(,"p99_ms":)" +
         num(fp99) + R"(,"max_ms":)" + num(maximum(r.fresh_ms)) + R"(,"mean_ms":)" +
         num(mean(r.fresh_ms)) + R"(,"cpu_p50_ms":)" + num(percentile(r.fresh_cpu_ms, 0.5)) + "}");
    double ratio = rp50 / fp50;
    emit(R"({"workload":"reconnect","stat":"ratio","baseline":"fresh_connect","p50_ratio":)" +
         num(ratio) + R"(,"p99_ratio":)" + num(rp99 / fp99) +
         R"(,"target_p50_ratio":1.5,"target_met":)" + (ratio <= 1.5 ? "true" : "false") + "}");
}

// ---- restart: server restart under load ----

/// The parameters PQping needs to reach the server, without the password: an OK answer then
/// costs the server a fork and the client nothing (no SCRAM hashing); a server that is up
/// answers the authentication request, which is all PQping asks for.
struct ping_target
{
    std::vector<std::string> keys, values;

    explicit ping_target(const std::string& conninfo)
    {
        char* err = nullptr;
        PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
        if (!opts) {
            std::string msg = err ? err : "cannot parse the connection string";
            PQfreemem(err);
            throw std::runtime_error("ping: " + msg);
        }
        for (auto* o = opts; o->keyword; ++o) {
            std::string k = o->keyword;
            if (o->val && *o->val &&
                (k == "host" || k == "hostaddr" || k == "port" || k == "dbname" || k == "user")) {
                keys.push_back(k);
                values.push_back(o->val);
            }
        }
        PQconninfoFree(opts);
        keys.push_back("connect_timeout");
        values.push_back("2");
        keys.push_back("passfile");
        values.push_back("/nonexistent/pgco-bench-no-passfile");
    }

    PGPing ping() const
    {
        std::vector<const char*> k, v;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            k.push_back(keys[i].c_str());
            v.push_back(values[i].c_str());
        }
        k.push_back(nullptr);
        v.push_back(nullptr);
        return PQpingParams(k.data(), v.data(), 0);
    }
};

struct restart_run
{
    std::string policy;
    int run = 0;
    double restart_cmd_ms = NAN;    // how long `pg-sandbox restart` took (pg_ctl -w)
    double down_ms = NAN;           // first ping that was not OK
    double accept_ms = NAN;         // start of the first OK ping after the server went down
    double first_ok_ms = NAN;       // first successful pgco query completed at or after accept
    double last_ok_before_ms = NAN; // last successful query before the outage
    double end_ms = NAN;            // end of the observation
    int restart_rc = 0;
    long failed = 0;
    std::vector<double> ok_rel, fail_rel; // completion times relative to the restart command
    pgco::pool_stats stats;
    bool workers_stopped = true;
};

restart_run run_restart(const pgco::pool_options& base,
                        const std::vector<std::chrono::milliseconds>& backoff,
                        const std::string& script, const std::string& state, int workers,
                        int run_index)
{
    constexpr auto warm = 1500ms;        // load before the restart (timeline shows the last 1 s)
    constexpr auto after_min = 3000ms;   // observe at least this long after the restart command
    constexpr auto after_first = 1000ms; // and this long after the first success after accept
    constexpr auto cap = 30s;            // give up observing

    asio::io_context io(1);
    pgco::pool_options o = base;
    o.retry.backoff = backoff;
    pgco::pool pool(io.get_executor(), o);
    ping_target target(base.conninfo);

    restart_run r;
    r.policy = policy_name(backoff);
    r.run = run_index;
    std::vector<bench_clock::time_point> ok_at, fail_at;
    bool stop = false;
    bench_clock::time_point t_restart{};

    std::atomic<bool> threads_stop{false};
    std::atomic<bool> restart_done{false};
    std::atomic<std::int64_t> down_at{0}, accept_at{0}, cmd_end_at{0}; // clock ticks; 0 = unset
    std::atomic<int> restart_rc{0};
    std::thread restarter, pinger;

    auto worker = [&](int) -> asio::awaitable<void> {
        while (!stop) {
            auto start = bench_clock::now();
            bool pause = false;
            try {
                int one = co_await pool.query_one<int>("SELECT 1");
                if (stop)
                    break;
                if (one != 1)
                    throw std::runtime_error("pool returned a wrong value");
                ok_at.push_back(bench_clock::now());
            } catch (const pgco::error& e) {
                if (stop)
                    break;
                auto now = bench_clock::now();
                fail_at.push_back(now);
                if (fail_at.size() <= 3)
                    std::fprintf(stderr, "bench_recovery: restart (%s): query failed: %s\n",
                                 r.policy.c_str(), e.what());
                pause = now - start < 1ms; // failed at once, without a retry pause: do not spin
            }
            if (pause)
                co_await sleep_for(1ms);
        }
    };

    auto body = [&]() -> asio::awaitable<void> {
        worker_group group(io);
        group.spawn(workers, worker);
        co_await sleep_for(warm);

        t_restart = bench_clock::now();
        std::string cmd = "'" + script + "' restart --state '" + state + "' >&2";
        restarter = std::thread([&, cmd] {
            restart_rc = std::system(cmd.c_str());
            cmd_end_at = bench_clock::now().time_since_epoch().count();
            restart_done = true;
        });
        pinger = std::thread([&] {
            // Down: poll gently (every ping to a live server forks a backend).
            while (!threads_stop) {
                if (target.ping() != PQPING_OK) {
                    down_at = bench_clock::now().time_since_epoch().count();
                    break;
                }
                std::this_thread::sleep_for(5ms);
            }
            // Up again: poll every millisecond.
            while (!threads_stop) {
                auto t = bench_clock::now();
                if (target.ping() == PQPING_OK) {
                    accept_at = t.time_since_epoch().count();
                    break;
                }
                std::this_thread::sleep_for(1ms);
            }
        });

        std::optional<bench_clock::time_point> first_seen;
        for (;;) {
            co_await sleep_for(2ms);
            auto now = bench_clock::now();
            if (now - t_restart >= cap) {
                std::fprintf(stderr,
                             "bench_recovery: restart (%s): no recovery observed within %lld s\n",
                             r.policy.c_str(), static_cast<long long>(cap.count()));
                break;
            }
            auto acc = accept_at.load();
            if (!first_seen && acc != 0 && !ok_at.empty() &&
                ok_at.back().time_since_epoch().count() >= acc)
                first_seen = now;
            if (first_seen && restart_done && now - t_restart >= after_min &&
                now - *first_seen >= after_first)
                break;
        }
        r.end_ms = to_ms(bench_clock::now() - t_restart);
        stop = true;
        threads_stop = true;
        r.workers_stopped = co_await group.cancel_and_wait(10s);
        if (!r.workers_stopped)
            std::fprintf(stderr,
                         "bench_recovery: restart (%s): %d worker(s) still running 10 s after "
                         "cancellation\n",
                         r.policy.c_str(), group.live());
        r.stats = pool.stats();
        group.rethrow_first_error();
        if (r.workers_stopped)
            co_await pool.close(5s);
        else
            io.stop();
    };
    try {
        run_on_io(io, body);
    } catch (...) {
        threads_stop = true;
        if (pinger.joinable())
            pinger.join();
        if (restarter.joinable())
            restarter.join();
        throw;
    }
    if (pinger.joinable())
        pinger.join();
    if (restarter.joinable())
        restarter.join();

    auto rel = [&](std::int64_t ticks) {
        if (ticks == 0)
            return std::nan("");
        return to_ms(bench_clock::time_point(bench_clock::duration(ticks)) - t_restart);
    };
    r.restart_rc = restart_rc;
    r.restart_cmd_ms = rel(cmd_end_at);
    r.down_ms = rel(down_at);
    r.accept_ms = rel(accept_at);
    for (auto t : ok_at)
        r.ok_rel.push_back(to_ms(t - t_restart));
    for (auto t : fail_at)
        r.fail_rel.push_back(to_ms(t - t_restart));
    r.failed = static_cast<long>(fail_at.size());
    if (!std::isnan(r.accept_ms)) {
        for (double t : r.ok_rel) {
            if (t >= r.accept_ms) {
                r.first_ok_ms = t;
                break;
            }
        }
        // The last success before the outage: nothing succeeds while the server is down.
        for (double t : r.ok_rel)
            if (t < r.accept_ms)
                r.last_ok_before_ms = t;
    }
    return r;
}

void report_restart_run(const restart_run& r)
{
    emit(R"({"workload":"restart","driver":"pgco","stat":"run","policy":")" + r.policy +
         R"(","run":)" + std::to_string(r.run) + R"(,"restart_cmd_ms":)" +
         num(r.restart_cmd_ms, 1) + R"(,"down_ms":)" + num(r.down_ms, 1) + R"(,"accept_ms":)" +
         num(r.accept_ms, 1) + R"(,"first_ok_ms":)" + num(r.first_ok_ms, 1) +
         R"(,"time_to_first_success_ms":)" + num(r.first_ok_ms - r.accept_ms, 1) +
         R"(,"last_ok_before_ms":)" + num(r.last_ok_before_ms, 1) + R"(,"outage_ms":)" +
         num(r.first_ok_ms - r.last_ok_before_ms, 1) + R"(,"ok":)" +
         std::to_string(r.ok_rel.size()) + R"(,"failed":)" + std::to_string(r.failed) +
         R"(,"connect_failures":)" + std::to_string(r.stats.connect_failures) +
         R"(,"query_retries":)" + std::to_string(r.stats.query_retries) + R"(,"restart_rc":)" +
         std::to_string(r.restart_rc) + R"(,"workers_stopped":)" +
         (r.workers_stopped ? "true" : "false") + "}");
}

struct bucket
{
    long t_ms;
    long ok;
    long failed;
};

std::vector<bucket> timeline(const restart_run& r, long before_ms, long width_ms)
{
    // Whole buckets only: the last, partial one would look like a drop.
    long end = static_cast<long>(std::floor(r.end_ms / static_cast<double>(width_ms))) * width_ms;
    std::vector<bucket> out;
    for (long t = -before_ms; t < end; t += width_ms)
        out.push_back({t, 0, 0});
    auto add = [&](double t, bool ok) {
        auto i = static_cast<long>(
            std::floor((t + static_cast<double>(before_ms)) / static_cast<double>(width_ms)));
        if (i < 0 || i >= static_cast<long>(out.size()))
            return;
        (ok ? out[static_cast<std::size_t>(i)].ok : out[static_cast<std::size_t>(i)].failed)++;
    };
    for (double t : r.ok_rel)
        add(t, true);
    for (double t : r.fail_rel)
        add(t, false);
    return out;
}

// ---- ticker: event-loop lateness during a reconnect storm ----

struct phase_stats
{
    std::vector<double> lateness_ms;
    // CPU time the loop thread itself used between two wake-ups: the part of a late tick that
    // pgco (or anything else on the loop) is responsible for; the rest is the CPU running
    // other threads or processes.
    std::vector<double> loop_cpu_ms;
    // How much of each tick's lateness the process's own threads (the loop and pgco's connect
    // workers) can account for: their CPU time between two wake-ups beyond the 1 ms period,
    // at most the lateness. The rest of a late tick is the CPU idle or running someone else
    // (the server, the machine's own daemons, the hypervisor).
    std::vector<double> own_ms;
    // Lateness of the bystander (see `bystander`): a thread with the loop's CPU and priority
    // that does nothing but sleep 1 ms at a time.
    std::vector<double> bystander_ms;
    long involuntary_switches = 0;
    long ok = 0, failed = 0;
    double seconds = 0;
};

struct ticker_result
{
    phase_stats bare, quiet, storm;
    int rounds = 0;
    long killed = 0;
    pgco::pool_stats before_storm, after_storm;
    bool workers_stopped = true;
    long loop_slice_us = 0;
};

double cpu_ms(clockid_t clock)
{
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

long involuntary_switches()
{
    rusage u{};
    ::getrusage(RUSAGE_THREAD, &u);
    return u.ru_nivcsw;
}

/// Asks the kernel's EEVDF scheduler (Linux 6.6+, custom slices 6.12+) for a shorter time
/// slice for the calling thread: an earlier virtual deadline, so a wake-up preempts the
/// server's backends on a shared CPU sooner. Unprivileged; a hint an application's event-loop
/// thread may set for itself. Returns false where the kernel refuses it.
bool request_slice(long microseconds)
{
    struct sched_attr_v1
    {
        std::uint32_t size;
        std::uint32_t sched_policy;
        std::uint64_t sched_flags;
        std::int32_t sched_nice;
        std::uint32_t sched_priority;
        std::uint64_t sched_runtime, sched_deadline, sched_period;
    } attr{};
    attr.size = sizeof attr;
    attr.sched_policy = SCHED_OTHER;
    attr.sched_runtime = static_cast<std::uint64_t>(microseconds) * 1000;
    if (::syscall(SYS_sched_setattr, 0, &attr, 0) != 0) {
        std::fprintf(stderr, "bench_recovery: sched_setattr(slice %ld us) refused: %s\n",
                     microseconds, std::strerror(errno));
        return false;
    }
    return true;
}

/// A thread that does nothing but sleep 1 ms at a time (absolute deadlines, like the ticker)
/// and records how late it wakes, into `stats(phase)` while the phase stays the same. It
/// inherits the process's CPU affinity and priority, so it gets from the CPU what the event
/// loop would get if it had no work at all: a loop tick no later than the bystander's worst was
/// delayed by the CPU (the server's backends, the machine, the hypervisor), not by the loop.
/// Its own CPU use is a few microseconds per wake-up.
class bystander
{
public:
    template <class Phase, class Stats>
    bystander(const std::atomic<Phase>& phase, Phase done, Stats stats)
        : thread_([this, &phase, done, stats] {
              auto next = bench_clock::now() + 1ms;
              auto before = phase.load();
              while (before != done && !stop_.load()) {
                  auto ns =
                      std::chrono::duration_cast<std::chrono::nanoseconds>(next.time_since_epoch())
                          .count();
                  timespec ts{static_cast<time_t>(ns / 1'000'000'000),
                              static_cast<long>(ns % 1'000'000'000)};
                  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
                  }
                  auto now = bench_clock::now();
                  auto after = phase.load();
                  if (after == before)
                      if (std::vector<double>* v = stats(after))
                          v->push_back(to_ms(now - next));
                  before = after;
                  next = now + 1ms;
              }
          })
    {
        static_assert(std::is_same_v<bench_clock, std::chrono::steady_clock>,
                      "clock_nanosleep(CLOCK_MONOTONIC) must be the benchmark's clock");
    }
    bystander(const bystander&) = delete;
    bystander& operator=(const bystander&) = delete;
    ~bystander()
    {
        stop_ = true; // in case the benchmark failed before its last phase
        thread_.join();
    }

private:
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

ticker_result run_ticker(const std::string& url, int rounds, std::chrono::milliseconds interval,
                         int workers, std::size_t limit, long loop_slice_us)
{
    const std::string app = "pgco_bench_storm";
    auto base = pgco::pool_options::from_url(url);
    auto o = pgco::pool_options::from_url(with_param(url, "application_name", app));
    o.connection_limit = limit;

    asio::io_context io(1);
    pgco::pool pool(io.get_executor(), o);
    ticker_result r;
    r.loop_slice_us = loop_slice_us;
    enum class phase
    {
        bare,
        warm,
        quiet,
        storm,
        done
    };
    // Written by the loop, read by the bystander thread.
    std::atomic<phase> ph = phase::bare;
    auto stats_of = [&r](phase p) -> phase_stats* {
        switch (p) {
        case phase::bare:
            return &r.bare;
        case phase::quiet:
            return &r.quiet;
        case phase::storm:
            return &r.storm;
        default:
            return nullptr;
        }
    };
    auto current = [&] { return stats_of(ph.load()); };

    auto ticker = [&]() -> asio::awaitable<void> {
        asio::steady_timer t(io);
        if (loop_slice_us > 0)
            request_slice(loop_slice_us);
        double cpu_before = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
        double process_before = cpu_ms(CLOCK_PROCESS_CPUTIME_ID);
        long switches_before = involuntary_switches();
        phase_stats* previous = nullptr;
        while (ph != phase::done) {
            auto scheduled = bench_clock::now() + 1ms;
            t.expires_at(scheduled);
            co_await t.async_wait(asio::use_awaitable);
            auto late = bench_clock::now() - scheduled;
            double cpu_now = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
            double process_now = cpu_ms(CLOCK_PROCESS_CPUTIME_ID);
            long switches_now = involuntary_switches();
            auto* s = current();
            if (s && s == previous) {
                s->lateness_ms.push_back(to_ms(late));
                s->loop_cpu_ms.push_back(cpu_now - cpu_before);
                s->own_ms.push_back(
                    std::clamp(process_now - process_before - 1.0, 0.0, to_ms(late)));
                s->involuntary_switches += switches_now - switches_before;
            }
            previous = s;
            cpu_before = cpu_now;
            process_before = process_now;
            switches_before = switches_now;
        }
    };
    auto worker = [&](int) -> asio::awaitable<void> {
        while (ph != phase::done) {
            auto start = bench_clock::now();
            bool pause = false;
            try {
                int one = co_await pool.query_one<int>("SELECT 1");
                if (one != 1)
                    throw std::runtime_error("pool returned a wrong value");
                if (auto* s = current())
                    ++s->ok;
            } catch (const pgco::error& e) {
                auto* s = current();
                if (s)
                    ++s->failed;
                if (s == &r.storm && r.storm.failed <= 3)
                    std::fprintf(stderr,
                                 "bench_recovery: ticker: query failed during the storm: %s\n",
                                 e.what());
                pause = bench_clock::now() - start < 1ms;
            }
            if (pause)
                co_await sleep_for(1ms);
        }
    };

    auto body = [&]() -> asio::awaitable<void> {
        pgco::connection admin(io.get_executor());
        co_await admin.connect(base);
        worker_group group(io);
        asio::co_spawn(io, ticker(), asio::detached);
        // The ticker alone first, as long as the storm lasts: the lateness this machine gives
        // a 1 ms timer with nothing else on the loop.
        auto t0 = bench_clock::now();
        co_await sleep_for(interval * rounds);
        r.bare.seconds = std::chrono::duration<double>(bench_clock::now() - t0).count();
        ph = phase::warm;
        group.spawn(workers, worker);
        co_await sleep_for(500ms); // every pool connection open

        ph = phase::quiet;
        t0 = bench_clock::now();
        co_await sleep_for(interval * rounds);
        r.quiet.seconds = std::chrono::duration<double>(bench_clock::now() - t0).count();

        r.before_storm = pool.stats();
        ph = phase::storm;
        t0 = bench_clock::now();
        for (int i = 0; i < rounds; ++i) {
            auto n = co_await admin.query_one<std::int64_t>(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                app);
            r.killed += n;
            ++r.rounds;
            co_await sleep_until(t0 + interval * (i + 1));
        }
        r.storm.seconds = std::chrono::duration<double>(bench_clock::now() - t0).count();
        r.after_storm = pool.stats();
        ph = phase::done;
        r.workers_stopped = co_await group.wait(10s);
        if (!r.workers_stopped)
            r.workers_stopped = co_await group.cancel_and_wait(10s);
        group.rethrow_first_error();
        admin.close();
        if (r.workers_stopped)
            co_await pool.close(5s);
        else
            io.stop();
    };
    {
        bystander control(ph, phase::done, [&](phase p) -> std::vector<double>* {
            auto* s = stats_of(p);
            return s ? &s->bystander_ms : nullptr;
        });
        run_on_io(io, body);
    } // joined: its numbers are in `r`
    return r;
}

long count_over(const std::vector<double>& v, double limit)
{
    return std::count_if(v.begin(), v.end(), [limit](double x) { return x > limit; });
}

void report_ticker_phase(const char* name, const phase_stats& s, const ticker_result& r, bool storm)
{
    long over = count_over(s.lateness_ms, 5.0);
    double worst = maximum(s.lateness_ms);
    std::string line =
        R"({"workload":"ticker","driver":"pgco","stat":")" + std::string(name) + R"(","ticks":)" +
        std::to_string(s.lateness_ms.size()) + R"(,"worst_ms":)" + num(worst) + R"(,"p99_ms":)" +
        num(percentile(s.lateness_ms, 0.99)) + R"(,"p50_ms":)" +
        num(percentile(s.lateness_ms, 0.5)) + R"(,"over_5ms":)" + std::to_string(over) +
        R"(,"seconds":)" + num(s.seconds) + R"(,"queries_ok":)" + std::to_string(s.ok) +
        R"(,"queries_failed":)" + std::to_string(s.failed) + R"(,"loop_cpu_worst_ms":)" +
        num(maximum(s.loop_cpu_ms)) + R"(,"own_worst_ms":)" + num(maximum(s.own_ms)) +
        R"(,"own_over_5ms":)" + std::to_string(count_over(s.own_ms, 5.0)) +
        R"(,"bystander_worst_ms":)" + num(maximum(s.bystander_ms)) + R"(,"bystander_p99_ms":)" +
        num(percentile(s.bystander_ms, 0.99)) + R"(,"bystander_over_5ms":)" +
        std::to_string(count_over(s.bystander_ms, 5.0)) + R"(,"involuntary_switches":)" +
        std::to_string(s.involuntary_switches) + R"(,"loop_slice_us":)" +
        std::to_string(r.loop_slice_us);
    if (storm) {
        line +=
            R"(,"rounds":)" + std::to_string(r.rounds) + R"(,"backends_killed":)" +
            std::to_string(r.killed) + R"(,"connections_opened":)" +
            std::to_string(r.after_storm.connections_opened - r.before_storm.connections_opened) +
            R"(,"query_retries":)" +
            std::to_string(r.after_storm.query_retries - r.before_storm.query_retries) +
            R"(,"closed_by_server":)" +
            std::to_string(r.after_storm.closed_by_server - r.before_storm.closed_by_server);
    }
    line += R"(,"target_worst_ms":5,"target_met":)" +
            std::string(!std::isnan(worst) && worst <= 5.0 ? "true" : "false") + "}";
    emit(line);
}

/// The longest single `PQconnectPoll` call of each of `n` raw libpq non-blocking connects: how
/// long one connect step can hold an event loop that drives libpq (with scram-sha-256 the
/// client's key derivation runs inside one such call).
std::vector<double> connect_poll_block(const std::string& conninfo, int n)
{
    std::vector<double> worst;
    for (int i = 0; i < n; ++i) {
        PGconn* c = PQconnectStart(conninfo.c_str());
        if (!c)
            throw std::runtime_error("PQconnectStart failed");
        auto st = PGRES_POLLING_WRITING;
        double longest = 0;
        while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
            pollfd p{PQsocket(c),
                     static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
            ::poll(&p, 1, 10000);
            auto t0 = bench_clock::now();
            st = PQconnectPoll(c);
            longest = std::max(longest, to_ms(bench_clock::now() - t0));
        }
        if (st == PGRES_POLLING_FAILED) {
            std::string msg = PQerrorMessage(c);
            PQfinish(c);
            throw std::runtime_error("libpq connect: " + msg);
        }
        PQfinish(c);
        worst.push_back(longest);
    }
    return worst;
}

std::vector<std::string> split(const std::string& s, char sep)
{
    std::vector<std::string> out;
    std::stringstream in(s);
    std::string part;
    while (std::getline(in, part, sep))
        if (!part.empty())
            out.push_back(part);
    return out;
}

int usage()
{
    std::fprintf(stderr,
                 "usage: pgco_bench_recovery --url URL [--workload all|reconnect,restart,ticker]\n"
                 "         [--kills N] [--reconnect-deadline S] [--sandbox-script PATH]\n"
                 "         [--sandbox-state DIR] [--restarts N] [--default-restarts N]\n"
                 "         [--restart-workers N] [--timeline-out FILE] [--storm-rounds N]\n"
                 "         [--storm-interval-ms MS] [--loop-slice-us US]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    setenv("PGCO_LOG_LEVEL", "warn", 0); // the library logs debug by default
    std::string url, workload = "all", script, state, timeline_out;
    int kills = 200, restarts = 3, default_restarts = 1, restart_workers = 4, storm_rounds = 20;
    long reconnect_deadline = 300, storm_interval = 100, loop_slice_us = 0;
    for (int i = 1; i < argc; i += 2) {
        std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "option %s needs a value\n", a.c_str());
            return 2;
        }
        std::string v = argv[i + 1];
        if (a == "--url")
            url = v;
        else if (a == "--workload")
            workload = v;
        else if (a == "--kills")
            kills = std::atoi(v.c_str());
        else if (a == "--reconnect-deadline")
            reconnect_deadline = std::atol(v.c_str());
        else if (a == "--sandbox-script")
            script = v;
        else if (a == "--sandbox-state")
            state = v;
        else if (a == "--restarts")
            restarts = std::atoi(v.c_str());
        else if (a == "--default-restarts")
            default_restarts = std::atoi(v.c_str());
        else if (a == "--restart-workers")
            restart_workers = std::atoi(v.c_str());
        else if (a == "--timeline-out")
            timeline_out = v;
        else if (a == "--storm-rounds")
            storm_rounds = std::atoi(v.c_str());
        else if (a == "--storm-interval-ms")
            storm_interval = std::atol(v.c_str());
        else if (a == "--loop-slice-us")
            loop_slice_us = std::atol(v.c_str());
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return usage();
        }
    }
    if (url.empty()) {
        if (const char* env = std::getenv("DATABASE_URL"))
            url = env;
    }
    bool all = workload == "all";
    bool do_reconnect = all, do_restart = all, do_ticker = all;
    for (auto& w : split(workload, ',')) {
        if (w == "reconnect")
            do_reconnect = true;
        else if (w == "restart")
            do_restart = true;
        else if (w == "ticker")
            do_ticker = true;
        else if (w != "all") {
            std::fprintf(stderr, "unknown workload %s\n", w.c_str());
            return usage();
        }
    }
    if (url.empty() || kills <= 0 || restarts < 0 || default_restarts < 0 || restart_workers <= 0 ||
        storm_rounds <= 0 || storm_interval <= 0)
        return usage();
    if (do_restart && (script.empty() || state.empty())) {
        if (!all) {
            std::fprintf(stderr, "restart needs --sandbox-script and --sandbox-state\n");
            return usage();
        }
        std::fprintf(stderr,
                     "bench_recovery: restart skipped: no --sandbox-script/--sandbox-state\n");
        do_restart = false;
    }

    try {
        auto opts = pgco::pool_options::from_url(url);
        if (do_reconnect) {
            auto r = run_reconnect(opts, kills, 5, std::chrono::seconds(reconnect_deadline));
            report_reconnect(r, kills);
        }
        if (do_restart) {
            const std::vector<std::chrono::milliseconds> short_backoff{0ms, 100ms, 200ms};
            const std::vector<std::chrono::milliseconds> default_backoff =
                pgco::retry_policy{}.backoff;
            std::vector<restart_run> shown; // the first run of each policy, for the timeline
            auto series = [&](const std::vector<std::chrono::milliseconds>& backoff, int n) {
                std::vector<double> ttfs, outage;
                for (int i = 0; i < n; ++i) {
                    auto r = run_restart(opts, backoff, script, state, restart_workers, i + 1);
                    report_restart_run(r);
                    ttfs.push_back(r.first_ok_ms - r.accept_ms);
                    outage.push_back(r.first_ok_ms - r.last_ok_before_ms);
                    if (i == 0)
                        shown.push_back(std::move(r));
                }
                if (n == 0)
                    return;
                emit(R"({"workload":"restart","driver":"pgco","stat":"median","policy":")" +
                     policy_name(backoff) + R"(","runs":)" + std::to_string(n) +
                     R"(,"time_to_first_success_ms":)" + num(median(ttfs), 1) +
                     R"(,"time_to_first_success_max_ms":)" + num(maximum(ttfs), 1) +
                     R"(,"outage_ms":)" + num(median(outage), 1) + "}");
            };
            series(short_backoff, restarts);
            series(default_backoff, default_restarts);

            std::ofstream data;
            if (!timeline_out.empty()) {
                data.open(timeline_out);
                if (!data)
                    throw std::runtime_error("cannot write " + timeline_out);
                data << "# pgco_bench_recovery restart timeline: successful (ok) and failed "
                        "queries per 100 ms,\n# t_ms = bucket start relative to the restart "
                        "command; one block per retry policy\n";
            }
            for (std::size_t b = 0; b < shown.size(); ++b) {
                const auto& r = shown[b];
                if (data) {
                    if (b > 0)
                        data << "\n\n";
                    data << "# policy=" << r.policy << " down_ms=" << num(r.down_ms, 1)
                         << " accept_ms=" << num(r.accept_ms, 1)
                         << " first_ok_ms=" << num(r.first_ok_ms, 1) << "\n";
                    data << "# t_ms t_mid_ms ok failed\n";
                }
                for (const auto& k : timeline(r, 1000, 100)) {
                    emit(R"({"workload":"restart","stat":"timeline","policy":")" + r.policy +
                         R"(","t_ms":)" + std::to_string(k.t_ms) + R"(,"ok":)" +
                         std::to_string(k.ok) + R"(,"failed":)" + std::to_string(k.failed) + "}");
                    if (data)
                        data << k.t_ms << ' ' << k.t_ms + 50 << ' ' << k.ok << ' ' << k.failed
                             << "\n";
                }
            }
        }
        if (do_ticker) {
            auto r = run_ticker(url, storm_rounds, std::chrono::milliseconds(storm_interval), 32,
                                10, loop_slice_us);
            report_ticker_phase("bare", r.bare, r, false);
            report_ticker_phase("quiet", r.quiet, r, false);
            report_ticker_phase("storm", r.storm, r, true);
            auto block = connect_poll_block(opts.conninfo, 20);
            emit(R"({"workload":"ticker","driver":"libpq","stat":"connect_poll_block","n":)" +
                 std::to_string(block.size()) + R"(,"p50_ms":)" + num(percentile(block, 0.5)) +
                 R"(,"max_ms":)" + num(maximum(block)) + "}");
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_recovery: failed: %s\n", e.what());
        return 1;
    }
}
