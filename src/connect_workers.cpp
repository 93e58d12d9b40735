#include "connect_workers.hpp"

#include <pgco/log.hpp>

#include <spdlog/spdlog.h>

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace pgco::detail {

namespace {

using clock = std::chrono::steady_clock;

// glibc 2.36 has no wrapper for sched_setattr; this is the kernel's struct sched_attr (its
// first version, which every kernel since 3.14 accepts).
struct sched_attr_v0
{
    std::uint32_t size;
    std::uint32_t sched_policy;
    std::uint64_t sched_flags;
    std::int32_t sched_nice;
    std::uint32_t sched_priority;
    std::uint64_t sched_runtime, sched_deadline, sched_period;
};

/// Sets thread `tid` (0: the caller) to `policy` (SCHED_IDLE or SCHED_OTHER) at nice 10.
bool set_policy(pid_t tid, int policy)
{
    sched_attr_v0 attr{};
    attr.size = sizeof attr;
    attr.sched_policy = static_cast<std::uint32_t>(policy);
    attr.sched_nice = 10;
    return ::syscall(SYS_sched_setattr, tid, &attr, 0) == 0;
}

/// Whether this process may move a thread from SCHED_IDLE back to SCHED_OTHER at nice 10 (tried
/// on a thread of its own, as a thread that cannot return would stay at idle priority).
bool idle_can_be_raised()
{
    bool ok = false;
    std::thread probe([&ok] { ok = set_policy(0, SCHED_IDLE) && set_policy(0, SCHED_OTHER); });
    probe.join();
    return ok;
}

/// The CPU time all of this process's threads have used.
double process_cpu_ms()
{
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

/// A moment, and how much CPU time the process had used by then.
struct mark
{
    clock::time_point at;
    double cpu_ms = 0;

    static mark now() { return {clock::now(), process_cpu_ms()}; }
};

} // namespace

struct connect_workers::state
{
    struct job
    {
        std::function<void()> fn;
        mark queued;
    };
    struct worker
    {
        std::thread thread;
        pid_t tid = 0;
        bool raised = false;
        std::optional<mark> running_since; // when it started its step
        mark free_since;                   // when it last finished one
    };

    priority mode = priority::nice_10;
    std::mutex m;
    std::condition_variable work_cv, watch_cv;
    std::deque<job> queue;
    std::vector<worker> workers{2};
    std::thread watchdog;
    long times_raised = 0;
    clock::time_point last_raise;
    bool stop = false;
    bool watchdog_waits = false; // with no deadline: the next step must wake it

    void work(std::size_t me)
    {
        std::unique_lock lock(m);
        auto& self = workers[me];
        self.tid = static_cast<pid_t>(::gettid());
        if (mode == priority::nice_10 || !set_policy(0, SCHED_IDLE))
            ::setpriority(PRIO_PROCESS, static_cast<id_t>(self.tid), 10);
        for (;;) {
            work_cv.wait(lock, [&] { return stop || !queue.empty(); });
            if (stop)
                return;
            auto j = std::move(queue.front());
            queue.pop_front();
            self.running_since = mark::now();
            lock.unlock();
            j.fn();
            j.fn = nullptr; // whatever it holds goes before the lock is taken again
            lock.lock();
            self.running_since.reset();
            self.free_since = mark::now();
            // Back to idle priority once no step has starved for `hold`: a connect is several
            // steps, and on a CPU that stays saturated each would wait `grace` again. (A thread
            // may always lower its own priority.)
            if (self.raised && self.free_since.at - last_raise > hold && set_policy(0, SCHED_IDLE))
                self.raised = false;
            if (watchdog_waits)
                watch_cv.notify_one();
        }
    }

    // When a worker starves at idle priority, raise it to nice 10 (until `hold` after the last
    // starving step). It starves when its step has run for longer than `grace` (the longest step
    // takes 2-3 ms of CPU), or when it has been free with a step waiting for longer than `grace`
    // (woken, but not scheduled). A step that waits while both workers run others is not late:
    // that is the queue, not the CPU. When this process itself kept its CPUs busy meanwhile (the
    // application's event loop, most likely), the worker yields to it for up to `self_grace`:
    // raised, it would take the CPU from the loop for a whole scheduler slice. Returns when to
    // look again.
    std::optional<clock::time_point> raise_starving(clock::time_point now)
    {
        std::optional<clock::time_point> next;
        auto look_again_at = [&next](clock::time_point t) {
            if (!next || t < *next)
                next = t;
        };
        for (auto& w : workers) {
            if (w.raised || w.tid == 0)
                continue;
            std::optional<mark> since;
            if (w.running_since)
                since = w.running_since;
            else if (!queue.empty())
                since =
                    w.free_since.at > queue.front().queued.at ? w.free_since : queue.front().queued;
            if (!since)
                continue;
            if (now < since->at + grace) {
                look_again_at(since->at + grace);
                continue;
            }
            if (now < since->at + self_grace && busy_by_itself(*since, now)) {
                look_again_at(std::min(now + grace, since->at + self_grace));
                continue;
            }
            if (set_policy(w.tid, SCHED_OTHER)) {
                w.raised = true;
                ++times_raised;
            }
            last_raise = now;
        }
        return next;
    }

    // Whether this process used at least 3/4 of the CPUs it may run on since `since`.
    static bool busy_by_itself(const mark& since, clock::time_point now)
    {
        cpu_set_t cpus;
        int n = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        double wall_ms = std::chrono::duration<double, std::milli>(now - since.at).count();
        return process_cpu_ms() - since.cpu_ms >= 0.75 * wall_ms * std::max(n, 1);
    }

    void watch()
    {
        // A batch thread's wake-ups never preempt the running thread. At normal priority, each
        // wake-up of the watchdog preempted the event loop, and the scheduler then gave the CPU
        // to an idle worker (idle threads keep a large lag), which ran a whole key derivation
        // before the loop got it back: the very stall the idle priority is there to prevent.
        sched_param none{};
        ::sched_setscheduler(0, SCHED_BATCH, &none);
        std::unique_lock lock(m);
        while (!stop) {
            if (auto next = raise_starving(clock::now())) {
                watch_cv.wait_until(lock, *next);
            } else {
                watchdog_waits = true;
                watch_cv.wait(lock);
                watchdog_waits = false;
            }
        }
    }
};

connect_workers::connect_workers() : s_(std::make_unique<state>())
{
    s_->mode = idle_can_be_raised() ? priority::idle_raised_when_late : priority::nice_10;
    for (std::size_t i = 0; i < s_->workers.size(); ++i)
        s_->workers[i].thread = std::thread([this, i] { s_->work(i); });
    if (s_->mode == priority::idle_raised_when_late)
        s_->watchdog = std::thread([this] { s_->watch(); });
    if (s_->mode == priority::nice_10)
        logger()->debug("connect steps run on {} worker threads at nice 10 (this process may "
                        "not raise threads from idle priority)",
                        s_->workers.size());
    else
        logger()->debug("connect steps run on {} worker threads at idle priority, raised to "
                        "nice 10 when a step starves for {} ms ({} ms while this process "
                        "itself keeps the CPU busy)",
                        s_->workers.size(), grace.count(), self_grace.count());
}

connect_workers::~connect_workers()
{
    {
        std::lock_guard lock(s_->m);
        s_->stop = true;
    }
    s_->work_cv.notify_all();
    s_->watch_cv.notify_all();
    for (auto& w : s_->workers)
        w.thread.join();
    if (s_->watchdog.joinable())
        s_->watchdog.join();
}

connect_workers& connect_workers::instance()
{
    // A process forked after the workers started has none (fork copies only the calling
    // thread): its connects would wait forever. So the child starts workers of its own. The
    // parent's object stays as it is: its threads cannot be joined in the child. Neither is
    // ever destroyed (a connect may still be running on a worker at exit).
    static std::mutex m;
    static connect_workers* workers = nullptr;
    static pid_t owner = 0;
    std::lock_guard lock(m);
    if (!workers || owner != ::getpid()) {
        workers = new connect_workers();
        owner = ::getpid();
    }
    return *workers;
}

void connect_workers::post(std::function<void()> job)
{
    bool wake_watchdog = false;
    auto queued = mark::now();
    {
        std::lock_guard lock(s_->m);
        s_->queue.push_back({std::move(job), queued});
        wake_watchdog = s_->watchdog_waits;
    }
    s_->work_cv.notify_one();
    if (wake_watchdog)
        s_->watch_cv.notify_one();
}

connect_workers::priority connect_workers::mode() const noexcept
{
    return s_->mode;
}

long connect_workers::times_raised() const noexcept
{
    std::lock_guard lock(s_->m);
    return s_->times_raised;
}

} // namespace pgco::detail
