#pragma once

#include <chrono>
#include <functional>
#include <memory>

namespace pgco::detail {

/// Threads that run libpq's connect steps (PQconnectPoll) off the event loop.
///
/// One of those steps derives the scram-sha-256 key: 4096 rounds of PBKDF2, 2-3 ms of CPU. On a
/// CPU the event loop shares, a worker at normal priority, even at nice 10, runs a whole
/// scheduler slice before the loop gets the CPU back. So, where the process may raise a thread
/// out of idle priority again (CAP_SYS_NICE, or RLIMIT_NICE of at least 10), the workers run at
/// idle priority (SCHED_IDLE): they get only CPU time nothing else wants, and any wake-up of the
/// loop preempts them at once. On a saturated CPU idle threads starve (a connect took 1.7 s
/// instead of 55 ms), so a watchdog raises a worker to nice 10 when its step has run, or a step
/// has waited for it while it was free, for longer than `grace` (`self_grace` when this process
/// itself kept the CPU busy meanwhile: the application's own event loop goes first); it returns
/// to idle priority once no step has starved for `hold`. Elsewhere the workers run at nice 10
/// throughout.
class connect_workers
{
public:
    enum class priority
    {
        idle_raised_when_late, ///< SCHED_IDLE, raised to nice 10 for late steps
        nice_10,               ///< nice 10 throughout
    };

    static constexpr std::chrono::milliseconds grace{5};
    static constexpr std::chrono::milliseconds self_grace{50};
    static constexpr std::chrono::milliseconds hold{500};

    /// The process's workers (two threads), started on first use, and again in a process
    /// forked after that.
    static connect_workers& instance();

    /// Runs `job` on a worker. `job` must not throw.
    void post(std::function<void()> job);

    /// Says that the loop gave up on a step still running (blocked inside libpq past its
    /// attempt's deadline, or its caller cancelled): its worker is held for as long as the
    /// step lasts. So that other connects do not wait behind it, the next `post` starts a
    /// spare worker in its stead, up to `max_spares` at a time.
    void step_abandoned();

    /// Says that a step given up on has returned (from the worker that ran it). Spares beyond
    /// those still needed end, the next time they wake.
    void abandoned_step_returned();

    /// Spare workers running now.
    int spares() const noexcept;

    static constexpr int max_spares = 8;

    priority mode() const noexcept;

    /// How often the watchdog raised the workers since the process started.
    long times_raised() const noexcept;

    connect_workers(const connect_workers&) = delete;
    connect_workers& operator=(const connect_workers&) = delete;
    ~connect_workers();

private:
    connect_workers();
    void add_spares();
    struct state;
    std::unique_ptr<state> s_;
};

} // namespace pgco::detail
