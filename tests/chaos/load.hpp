#pragma once

// The fault suite's load: N worker coroutines on one pgco::pool run a steady mix of unique-key
// writes, checked reads and two-row transactions, and record what each caller was told. After
// the scenario, `verify` compares that with what the database holds:
//
//   write told ok               -> its key is in chaos_w exactly once
//   write failed, not applied   -> its key is absent
//   write failed, maybe applied -> "unknown": present at most once (how many: reported)
//   no key twice, no key nobody wrote
//
// and the same for transactions in chaos_tx (both rows of a key or none).

#include <pgco/connection.hpp>
#include <pgco/pool.hpp>

#include <boost/asio/awaitable.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace pgco::chaos {

/// Creates (or empties) the tables the load writes to.
boost::asio::awaitable<void> create_tables(pgco::connection& admin);

struct load_options
{
    /// Worker coroutines sharing the pool.
    int workers = 8;
    /// Operations in all, across the workers (the load also ends at `max_duration` or `stop()`).
    std::uint64_t max_ops = 100000;
    /// Each worker rests this long between two operations, so the load is steady rather than a
    /// flood (unpaced, 8 workers reach ~20k operations/s here and use up `max_ops` in seconds).
    std::chrono::microseconds pause{1000};
    /// Longest the load runs.
    std::chrono::milliseconds max_duration{std::chrono::seconds(25)};
    /// The mix, by operation number: 4 in 10 are writes, 5 reads, and 1 a two-row transaction
    /// (a read instead when this is false).
    bool transactions = true;
    /// Keys written are key_base + 1, key_base + 2... (two loads sharing the tables need
    /// disjoint ranges).
    std::int64_t key_base = 0;
    /// Name printed in reports.
    std::string name = "load";
};

/// What callers were told, for the operations that started in one phase.
struct load_counts
{
    std::uint64_t operations = 0;
    std::uint64_t reads_ok = 0, reads_failed = 0, reads_wrong = 0;
    std::uint64_t writes_ok = 0, writes_not_applied = 0, writes_unknown = 0;
    std::uint64_t tx_ok = 0, tx_not_applied = 0, tx_unknown = 0;
    /// Failures whose message says the retry layer gave up ("... failed after N attempts").
    std::uint64_t gave_up = 0;

    std::uint64_t failures() const
    {
        return reads_failed + writes_not_applied + writes_unknown + tx_not_applied + tx_unknown;
    }
    std::uint64_t successes() const { return reads_ok + writes_ok + tx_ok; }
    load_counts& operator+=(const load_counts& o);
};

/// What `verify` found in the tables.
struct verify_result
{
    std::uint64_t rows = 0, tx_rows = 0;
    std::uint64_t unknown_present = 0, unknown_absent = 0;
    std::uint64_t tx_unknown_present = 0, tx_unknown_absent = 0;
};

/// One recorded failure.
struct failure_note
{
    int phase = 0;
    std::string kind; // "read", "write", "tx"
    std::string code; // pgco::errc message or the exception type
    std::string sqlstate;
    std::string what;
    bool maybe_applied = false;
};

class load
{
public:
    static constexpr int phases = 3;

    /// What a write's caller was told.
    enum class outcome : std::uint8_t
    {
        none,        ///< not attempted (yet)
        ok,          ///< succeeded
        not_applied, ///< failed, and `maybe_applied` says it did not take effect
        unknown,     ///< failed, and it may have taken effect
    };

    load(pgco::pool& p, load_options opts);

    /// Runs the workers until `stop()`, `max_ops` or `max_duration`; returns when all ended.
    boost::asio::awaitable<void> run();
    /// Asks the workers to finish their current operation and end.
    void stop() noexcept { stop_ = true; }
    bool running() const noexcept { return running_; }

    /// Operations started from now on are counted in phase `p` (0..phases-1). Scenarios use 0
    /// for "before and during the fault" and 1 for "after the server is healthy again".
    void set_phase(int p) noexcept { phase_ = p; }

    /// Counts of one phase, or of all.
    const load_counts& counts(int phase) const { return counts_[phase]; }
    load_counts total() const;

    /// Failures recorded (the first 2000).
    const std::vector<failure_note>& failures() const { return failures_; }
    /// True if some failure message (of `phase`, or any if -1) contains every part.
    bool has_failure_containing(std::initializer_list<std::string_view> parts,
                                int phase = -1) const;
    /// Failure counts by "kind code" (e.g. "read P1017: server closed the connection").
    std::map<std::string, std::uint64_t> failures_by_code() const { return by_code_; }

    /// One extra write, outside the workers, that takes `server_seconds` on the server
    /// (`INSERT ... SELECT ... FROM pg_sleep`), so a scenario can be sure it is in flight when
    /// a fault strikes. Counted and verified like the workers' writes; returns its key and what
    /// its caller was told.
    boost::asio::awaitable<std::pair<std::int64_t, outcome>> slow_write(double server_seconds);

    /// Checks the tables against what callers were told (EXPECTs inside; never throws for a
    /// mismatch). Run it after the scenario, on a fresh connection to a healthy server.
    boost::asio::awaitable<verify_result> verify(pgco::connection& c);

    /// Prints the counts (and failure kinds) and records them as test properties.
    void report(const std::string& scenario, std::uint64_t faults, std::uint64_t retries,
                const verify_result& v) const;

private:
    boost::asio::awaitable<void> worker(int id);
    boost::asio::awaitable<bool> do_read(int phase, std::uint64_t n);
    boost::asio::awaitable<bool> do_write(int phase, int worker, double server_seconds = 0,
                                          std::int64_t* key_out = nullptr);
    boost::asio::awaitable<bool> do_tx(int phase);
    void note_failure(int phase, const char* kind, const std::exception& e);

    pgco::pool& pool_;
    load_options opts_;
    std::chrono::steady_clock::time_point deadline_;
    std::atomic<std::uint64_t> next_op_{0};
    std::atomic<std::int64_t> next_key_{0};
    std::atomic<std::int64_t> next_tx_key_{0};
    bool stop_ = false;
    bool running_ = false;
    int phase_ = 0;
    std::array<load_counts, phases> counts_{};
    std::vector<outcome> writes_; // by key - key_base
    std::vector<outcome> txs_;    // by key - key_base
    std::vector<failure_note> failures_;
    std::map<std::string, std::uint64_t> by_code_;
    std::uint64_t wrong_reported_ = 0;
};

} // namespace pgco::chaos
