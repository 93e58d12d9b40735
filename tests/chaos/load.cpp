#include "chaos/load.hpp"

#include "chaos/chaos_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <iostream>
#include <sstream>
#include <stdexcept>
#include <typeinfo>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::awaitable;

namespace pgco::chaos {

namespace {

constexpr std::size_t max_failure_notes = 2000;
constexpr int max_examples = 10;

struct key_count
{
    std::int64_t k;
    std::int64_t n;
};

struct tx_key_count
{
    std::int64_t k;
    std::int64_t n;
    std::int64_t parts;
    std::int32_t min_part;
    std::int32_t max_part;
};

/// Counts violations of one kind and keeps a few examples for the failure message.
struct violations
{
    std::string what;
    std::uint64_t count = 0;
    std::string examples;

    void add(std::int64_t k, std::int64_t n)
    {
        if (count++ < max_examples)
            examples += " k=" + std::to_string(k) + "(x" + std::to_string(n) + ")";
    }
    void check() const
    {
        EXPECT_EQ(count, 0u) << what << ":" << examples << (count > max_examples ? " ..." : "");
    }
};

} // namespace

awaitable<void> create_tables(pgco::connection& admin)
{
    // No primary key: a duplicate must be visible, not refused.
    co_await admin.execute("DROP TABLE IF EXISTS chaos_w");
    co_await admin.execute("CREATE TABLE chaos_w (k int8, worker int)");
    co_await admin.execute("DROP TABLE IF EXISTS chaos_tx");
    co_await admin.execute("CREATE TABLE chaos_tx (k int8, part int)");
}

load_counts& load_counts::operator+=(const load_counts& o)
{
    operations += o.operations;
    reads_ok += o.reads_ok;
    reads_failed += o.reads_failed;
    reads_wrong += o.reads_wrong;
    writes_ok += o.writes_ok;
    writes_not_applied += o.writes_not_applied;
    writes_unknown += o.writes_unknown;
    tx_ok += o.tx_ok;
    tx_not_applied += o.tx_not_applied;
    tx_unknown += o.tx_unknown;
    gave_up += o.gave_up;
    return *this;
}

load::load(pgco::pool& p, load_options opts)
    : pool_(p), opts_(std::move(opts)), writes_(opts_.max_ops + 1, outcome::none),
      txs_(opts_.max_ops + 1, outcome::none)
{}

load_counts load::total() const
{
    load_counts t;
    for (const auto& c : counts_)
        t += c;
    return t;
}

awaitable<void> load::run()
{
    auto ex = co_await asio::this_coro::executor;
    running_ = true;
    stop_ = false;
    deadline_ = clock_type::now() + opts_.max_duration;
    int remaining = opts_.workers;
    std::exception_ptr first_failure;
    asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
    for (int i = 0; i < opts_.workers; ++i) {
        asio::co_spawn(ex, worker(i), [&](std::exception_ptr e) {
            if (e && !first_failure)
                first_failure = e;
            if (--remaining == 0)
                all_done.cancel();
        });
    }
    while (remaining > 0)
        co_await all_done.async_wait(asio::as_tuple(asio::use_awaitable));
    running_ = false;
    if (first_failure)
        std::rethrow_exception(first_failure);
}

awaitable<void> load::worker(int id)
{
    for (;;) {
        if (stop_ || clock_type::now() >= deadline_)
            break;
        auto n = next_op_++;
        if (n >= opts_.max_ops)
            break;
        int phase = phase_;
        ++counts_[phase].operations;
        auto slot = n % 10;
        bool ok;
        if (slot < 4)
            ok = co_await do_write(phase, id);
        else if (slot == 9 && opts_.transactions)
            ok = co_await do_tx(phase);
        else
            ok = co_await do_read(phase, n);
        // A caller that was just refused does not hammer the pool in a tight loop.
        if (!ok)
            co_await sleep_for(20ms);
        else if (opts_.pause.count() > 0)
            co_await sleep_for(opts_.pause);
    }
}

awaitable<bool> load::do_read(int phase, std::uint64_t n)
{
    auto& c = counts_[phase];
    auto x = static_cast<std::int64_t>(n) * 7919 + 13;
    try {
        auto v = co_await pool_.query_one<std::int64_t>(pgco::idempotent, "SELECT $1::int8 * 2", x);
        if (v != 2 * x) {
            ++c.reads_wrong;
            if (wrong_reported_++ < max_examples)
                ADD_FAILURE() << "wrong data: SELECT " << x << " * 2 returned " << v;
        } else {
            ++c.reads_ok;
        }
        co_return true;
    } catch (const pgco::error& e) {
        ++c.reads_failed;
        note_failure(phase, "read", e);
    }
    co_return false;
}

awaitable<std::pair<std::int64_t, load::outcome>> load::slow_write(double server_seconds)
{
    // Each write needs a key, and there is one per operation of `max_ops`.
    if (next_op_++ >= opts_.max_ops)
        throw std::logic_error("slow_write: the load's max_ops are used up");
    int phase = phase_;
    ++counts_[phase].operations;
    std::int64_t k = 0;
    co_await do_write(phase, -1, server_seconds, &k);
    co_return std::pair{k, writes_[static_cast<std::size_t>(k - opts_.key_base)]};
}

awaitable<bool> load::do_write(int phase, int worker, double server_seconds, std::int64_t* key_out)
{
    auto& c = counts_[phase];
    std::int64_t key = ++next_key_;
    std::int64_t k = opts_.key_base + key;
    if (key_out)
        *key_out = k;
    try {
        std::uint64_t rows = 0;
        if (server_seconds > 0)
            rows = co_await pool_.execute(
                "INSERT INTO chaos_w (k, worker) SELECT $1, $2 FROM pg_sleep($3)", k, worker,
                server_seconds);
        else
            rows = co_await pool_.execute("INSERT INTO chaos_w (k, worker) VALUES ($1, $2)", k,
                                          worker);
        EXPECT_EQ(rows, 1u) << "INSERT of k=" << k;
        writes_[key] = outcome::ok;
        ++c.writes_ok;
        co_return true;
    } catch (const pgco::error& e) {
        if (pgco::maybe_applied(e)) {
            writes_[key] = outcome::unknown;
            ++c.writes_unknown;
        } else {
            writes_[key] = outcome::not_applied;
            ++c.writes_not_applied;
        }
        note_failure(phase, "write", e);
    }
    co_return false;
}

awaitable<bool> load::do_tx(int phase)
{
    auto& c = counts_[phase];
    std::int64_t key = ++next_tx_key_;
    std::int64_t k = opts_.key_base + key;
    // Named, not a temporary inside the co_await: GCC 12 destroys lambdas made inside a co_await
    // expression twice.
    auto body = [k](pgco::transaction& tx) -> awaitable<void> {
        co_await tx.execute("INSERT INTO chaos_tx (k, part) VALUES ($1, 1)", k);
        co_await tx.execute("INSERT INTO chaos_tx (k, part) VALUES ($1, 2)", k);
    };
    try {
        co_await pool_.transaction(body);
        txs_[key] = outcome::ok;
        ++c.tx_ok;
        co_return true;
    } catch (const pgco::error& e) {
        if (pgco::maybe_applied(e)) {
            txs_[key] = outcome::unknown;
            ++c.tx_unknown;
        } else {
            txs_[key] = outcome::not_applied;
            ++c.tx_not_applied;
        }
        note_failure(phase, "tx", e);
    }
    co_return false;
}

void load::note_failure(int phase, const char* kind, const std::exception& ex)
{
    failure_note f;
    f.phase = phase;
    f.kind = kind;
    f.what = ex.what();
    if (auto* e = dynamic_cast<const pgco::error*>(&ex)) {
        f.code = e->code().message();
        f.sqlstate = e->sqlstate();
        f.maybe_applied = pgco::maybe_applied(*e);
    } else {
        f.code = typeid(ex).name();
    }
    if (f.what.find("failed after") != std::string::npos)
        ++counts_[phase].gave_up;
    ++by_code_[f.kind + " " + f.code + (f.sqlstate.empty() ? "" : " [" + f.sqlstate + "]") +
               (f.maybe_applied ? " (maybe applied)" : "")];
    if (failures_.size() < max_failure_notes)
        failures_.push_back(std::move(f));
}

bool load::has_failure_containing(std::initializer_list<std::string_view> parts, int phase) const
{
    for (const auto& f : failures_) {
        if (phase >= 0 && f.phase != phase)
            continue;
        bool all = true;
        for (auto p : parts)
            all = all && f.what.find(p) != std::string::npos;
        if (all)
            return true;
    }
    return false;
}

awaitable<verify_result> load::verify(pgco::connection& c)
{
    verify_result r;
    const std::int64_t lo = opts_.key_base, hi = opts_.key_base + std::int64_t(opts_.max_ops);

    // ---- single-statement writes ----
    auto dups = co_await c.query_one<std::int64_t>(
        "SELECT count(*) FROM (SELECT k FROM chaos_w WHERE k > $1 AND k <= $2 GROUP BY k "
        "HAVING count(*) > 1) d",
        lo, hi);
    EXPECT_EQ(dups, 0) << "keys present more than once in chaos_w";

    auto rows = co_await c.query<key_count>(
        "SELECT k, count(*) FROM chaos_w WHERE k > $1 AND k <= $2 GROUP BY k", lo, hi);
    std::vector<bool> present(writes_.size(), false);
    violations twice{"writes present more than once"};
    violations not_applied_present{"writes reported failed-not-applied but present"};
    violations nobody{"keys present that no caller wrote"};
    for (const auto& row : rows) {
        r.rows += static_cast<std::uint64_t>(row.n);
        auto key = static_cast<std::size_t>(row.k - lo);
        if (row.n > 1)
            twice.add(row.k, row.n);
        if (key == 0 || key >= writes_.size() || writes_[key] == outcome::none) {
            nobody.add(row.k, row.n);
            continue;
        }
        present[key] = true;
        if (writes_[key] == outcome::not_applied)
            not_applied_present.add(row.k, row.n);
        if (writes_[key] == outcome::unknown)
            ++r.unknown_present;
    }
    violations lost{"writes reported ok but missing"};
    for (std::size_t key = 1; key < writes_.size(); ++key) {
        if (present[key])
            continue;
        if (writes_[key] == outcome::ok)
            lost.add(lo + std::int64_t(key), 0);
        if (writes_[key] == outcome::unknown)
            ++r.unknown_absent;
    }
    twice.check();
    not_applied_present.check();
    nobody.check();
    lost.check();

    // ---- transactions: both rows of a key or none ----
    auto tx_rows = co_await c.query<tx_key_count>(
        "SELECT k, count(*), count(DISTINCT part), min(part), max(part) FROM chaos_tx "
        "WHERE k > $1 AND k <= $2 GROUP BY k",
        lo, hi);
    std::vector<bool> tx_present(txs_.size(), false);
    violations torn{"transactions not present as exactly their two rows (torn or doubled)"};
    violations tx_not_applied_present{"transactions reported failed-not-applied but present"};
    violations tx_nobody{"transaction keys present that no caller wrote"};
    for (const auto& row : tx_rows) {
        r.tx_rows += static_cast<std::uint64_t>(row.n);
        auto key = static_cast<std::size_t>(row.k - lo);
        if (row.n != 2 || row.parts != 2 || row.min_part != 1 || row.max_part != 2)
            torn.add(row.k, row.n);
        if (key == 0 || key >= txs_.size() || txs_[key] == outcome::none) {
            tx_nobody.add(row.k, row.n);
            continue;
        }
        tx_present[key] = true;
        if (txs_[key] == outcome::not_applied)
            tx_not_applied_present.add(row.k, row.n);
        if (txs_[key] == outcome::unknown)
            ++r.tx_unknown_present;
    }
    violations tx_lost{"transactions reported committed but missing"};
    for (std::size_t key = 1; key < txs_.size(); ++key) {
        if (tx_present[key])
            continue;
        if (txs_[key] == outcome::ok)
            tx_lost.add(lo + std::int64_t(key), 0);
        if (txs_[key] == outcome::unknown)
            ++r.tx_unknown_absent;
    }
    torn.check();
    tx_not_applied_present.check();
    tx_nobody.check();
    tx_lost.check();
    co_return r;
}

void load::report(const std::string& scenario, std::uint64_t faults, std::uint64_t retries,
                  const verify_result& v) const
{
    auto t = total();
    std::ostringstream out;
    out << "[chaos] " << scenario << " / " << opts_.name << ": operations=" << t.operations
        << " reads ok=" << t.reads_ok << " failed=" << t.reads_failed << " wrong=" << t.reads_wrong
        << " | writes ok=" << t.writes_ok << " not-applied=" << t.writes_not_applied
        << " unknown=" << t.writes_unknown << " (present " << v.unknown_present << ", absent "
        << v.unknown_absent << ")"
        << " | tx ok=" << t.tx_ok << " not-applied=" << t.tx_not_applied
        << " unknown=" << t.tx_unknown << " (present " << v.tx_unknown_present << ", absent "
        << v.tx_unknown_absent << ")"
        << " | gave-up=" << t.gave_up << " faults=" << faults << " retries=" << retries
        << " rows=" << v.rows << " tx-rows=" << v.tx_rows
        << " multiplexed=" << pool_.stats().statements_multiplexed << "\n";
    for (int p = 0; p < phases; ++p) {
        const auto& c = counts_[p];
        if (c.operations == 0)
            continue;
        out << "[chaos]   phase " << p << ": operations=" << c.operations << " ok=" << c.successes()
            << " failed=" << c.failures() << "\n";
    }
    for (const auto& [code, n] : by_code_)
        out << "[chaos]   " << n << " x " << code << "\n";
    auto one_line = [](std::string text) {
        for (auto& ch : text)
            if (ch == '\n' || ch == '\t')
                ch = ' ';
        if (text.size() > 600)
            text = text.substr(0, 600) + " ...";
        return text;
    };
    if (!failures_.empty())
        out << "[chaos]   first failure: " << one_line(failures_.front().what) << "\n"
            << "[chaos]   last failure: " << one_line(failures_.back().what) << "\n";
    std::cout << out.str() << std::flush;

    auto prop = [&](const char* key, std::uint64_t value) {
        testing::Test::RecordProperty(opts_.name + "_" + key, std::to_string(value));
    };
    prop("operations", t.operations);
    prop("reads_ok", t.reads_ok);
    prop("reads_failed", t.reads_failed);
    prop("writes_ok", t.writes_ok);
    prop("writes_not_applied", t.writes_not_applied);
    prop("writes_unknown", t.writes_unknown);
    prop("writes_unknown_present", v.unknown_present);
    prop("tx_ok", t.tx_ok);
    prop("tx_not_applied", t.tx_not_applied);
    prop("tx_unknown", t.tx_unknown);
    prop("tx_unknown_present", v.tx_unknown_present);
    prop("faults", faults);
    prop("retries", retries);
}

} // namespace pgco::chaos
