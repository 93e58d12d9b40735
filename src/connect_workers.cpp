#include "connect_workers.hpp"

#include <pgco/log.hpp>

#include <spdlog/spdlog.h>

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

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

using ns = std::int64_t;

// Waiting for a counter to change, on a futex directly. Not std::atomic::wait: libstdc++'s
// spins with sched_yield() first, and under EEVDF each yield pushes a low-priority thread's
// deadline further out, so a raised worker then waited ~16 ms for the CPU on every step.
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
              std::atomic<std::uint32_t>::is_always_lock_free);

void wait_for_change(std::atomic<std::uint32_t>& counter, std::uint32_t seen)
{
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&counter), FUTEX_WAIT_PRIVATE, seen,
              nullptr, nullptr, 0);
}

void wake_all(std::atomic<std::uint32_t>& counter)
{
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&counter), FUTEX_WAKE_PRIVATE,
              std::numeric_limits<int>::max(), nullptr, nullptr, 0);
}

/// The CPU time all of this process's threads have used.
ns process_cpu()
{
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ns(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

ns steady_now()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch())
        .count();
}

ns to_ns(std::chrono::milliseconds d)
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

/// A moment, and how much CPU time the process had used by then, kept in atomics: the
/// watchdog reads them without a lock.
struct mark
{
    std::atomic<ns> at{0}, cpu{0};

    void set_now()
    {
        cpu.store(process_cpu(), std::memory_order_relaxed);
        at.store(steady_now(), std::memory_order_release);
    }
};

} // namespace

// The event loop posts a step without waiting for anyone, and the watchdog reads atomics: with
// a mutex they shared with the workers, a worker at idle priority preempted while holding it
// would keep them waiting for as long as the worker starves. Only the workers share a mutex.
struct connect_workers::state
{
    struct worker
    {
        std::thread thread;
        std::atomic<pid_t> tid{0};
        std::atomic<bool> running{false}, raised{false};
        mark running_since; // when it started its step
        mark free_since;    // when it last finished one
    };

    priority mode = priority::nice_10;
    // Posted steps: a lock-free stack the loop pushes onto; a worker takes all of it at once
    // into `taken` (oldest first), which only the workers share, under `taking`.
    struct job
    {
        std::function<void()> fn;
        job* next = nullptr;
    };
    std::atomic<job*> inbox{nullptr};
    std::mutex taking;
    std::deque<std::unique_ptr<job>> taken;
    // Workers and the watchdog wait for `posted` to change. Counters wrap; only their equality
    // matters.
    std::atomic<std::uint32_t> posted{0}, started{0};
    std::atomic<bool> stop{false};
    mark last_post;
    std::atomic<ns> last_raise{0};
    std::atomic<long> times_raised{0};
    std::array<worker, 2> workers;
    std::thread watchdog;
    // Steps given up on that still run, and spare workers standing in for them. Spares run at
    // nice 10 (the watchdog does not look after them) and are detached: one may be the thread
    // that is blocked.
    std::atomic<int> stuck{0}, spare_count{0};
    std::atomic<bool> all_spares_warned{false};

    std::unique_ptr<job> next_job()
    {
        std::lock_guard lock(taking);
        if (taken.empty()) {
            // The stack holds the newest first.
            for (job* j = inbox.exchange(nullptr, std::memory_order_acquire); j;) {
                job* next = j->next;
                taken.emplace_front(j);
                j = next;
            }
        }
        if (taken.empty())
            return nullptr;
        auto j = std::move(taken.front());
        taken.pop_front();
        return j;
    }

    void work(worker& self)
    {
        self.tid = static_cast<pid_t>(::gettid());
        if (mode == priority::nice_10 || !set_policy(0, SCHED_IDLE))
            ::setpriority(PRIO_PROCESS, static_cast<id_t>(self.tid.load()), 10);
        for (;;) {
            auto seen = posted.load(std::memory_order_acquire);
            auto j = next_job();
            if (!j) {
                if (stop.load(std::memory_order_acquire))
                    return;
                wait_for_change(posted, seen); // returns once a step was posted
                continue;
            }
            self.running_since.set_now();
            self.running.store(true, std::memory_order_release);
            started.fetch_add(1, std::memory_order_release);
            j->fn();
            j.reset();
            self.free_since.set_now();
            self.running.store(false, std::memory_order_release);
            // Back to idle priority once no step has starved for `hold`: a connect is several
            // steps, and on a CPU that stays saturated each would wait `grace` again. (A thread
            // may always lower its own priority.)
            if (self.raised.load(std::memory_order_acquire) &&
                self.free_since.at.load(std::memory_order_relaxed) -
                        last_raise.load(std::memory_order_acquire) >
                    to_ns(hold) &&
                set_policy(0, SCHED_IDLE))
                self.raised.store(false, std::memory_order_release);
        }
    }

    // A spare takes steps like a worker while steps given up on hold workers, and ends once
    // there are more spares than such steps.
    void work_spare()
    {
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
        for (;;) {
            int n = spare_count.load(std::memory_order_acquire);
            while (n > stuck.load(std::memory_order_acquire) || stop.load()) {
                if (spare_count.compare_exchange_weak(n, n - 1, std::memory_order_acq_rel))
                    return;
            }
            auto seen = posted.load(std::memory_order_acquire);
            auto j = next_job();
            if (!j) {
                wait_for_change(posted, seen);
                continue;
            }
            started.fetch_add(1, std::memory_order_release);
            j->fn();
        }
    }

    // When a worker starves at idle priority, raise it to nice 10 (until `hold` after the last
    // starving step). It starves when its step has run for longer than `grace` (the longest step
    // takes 2-3 ms of CPU), or when it has been free with a step waiting for longer than `grace`
    // (woken, but not scheduled; measured from the later of the last post and the worker's last
    // step). A step that waits while both workers run others is not late: that is the queue,
    // not the CPU. When this process itself kept its CPUs busy meanwhile (the application's
    // event loop, most likely), the worker yields to it for up to `self_grace`: raised, it
    // would take the CPU from the loop for a whole scheduler slice.
    // Returns when a worker not yet raised could be late next.
    std::optional<ns> raise_starving()
    {
        std::optional<ns> next;
        auto look_again_at = [&next](ns t) {
            if (!next || t < *next)
                next = t;
        };
        ns now = steady_now();
        bool waiting =
            started.load(std::memory_order_acquire) != posted.load(std::memory_order_acquire);
        for (auto& w : workers) {
            pid_t tid = w.tid.load(std::memory_order_acquire);
            if (tid == 0 || w.raised.load(std::memory_order_acquire))
                continue;
            ns since_at = 0, since_cpu = 0;
            if (w.running.load(std::memory_order_acquire)) {
                since_at = w.running_since.at.load(std::memory_order_acquire);
                since_cpu = w.running_since.cpu.load(std::memory_order_relaxed);
            } else if (waiting) {
                const mark& later = w.free_since.at.load(std::memory_order_acquire) >
                                            last_post.at.load(std::memory_order_acquire)
                                        ? w.free_since
                                        : last_post;
                since_at = later.at.load(std::memory_order_acquire);
                since_cpu = later.cpu.load(std::memory_order_relaxed);
            } else {
                continue;
            }
            if (now - since_at < to_ns(grace)) {
                look_again_at(since_at + to_ns(grace));
                continue;
            }
            if (now - since_at < to_ns(self_grace) && busy_by_itself(since_at, since_cpu, now)) {
                look_again_at(std::min(now + to_ns(grace), since_at + to_ns(self_grace)));
                continue;
            }
            if (set_policy(tid, SCHED_OTHER)) {
                w.raised.store(true, std::memory_order_release);
                times_raised.fetch_add(1, std::memory_order_relaxed);
            }
            last_raise.store(now, std::memory_order_release);
        }
        return next;
    }

    // Whether this process used at least 3/4 of the CPUs it may run on since `at`.
    static bool busy_by_itself(ns at, ns cpu_then, ns now)
    {
        cpu_set_t cpus;
        int n = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        return process_cpu() - cpu_then >= (now - at) * 3 / 4 * std::max(n, 1);
    }

    void watch()
    {
        // A batch thread's wake-ups never preempt the running thread. At normal priority, each
        // wake-up of the watchdog preempted the event loop, and the scheduler then gave the CPU
        // to an idle worker (idle threads keep a large lag), which ran a whole key derivation
        // before the loop got it back: the very stall the idle priority is there to prevent.
        sched_param none{};
        ::sched_setscheduler(0, SCHED_BATCH, &none);
        while (!stop.load(std::memory_order_acquire)) {
            auto seen = posted.load(std::memory_order_acquire);
            bool busy = started.load(std::memory_order_acquire) != seen ||
                        std::any_of(workers.begin(), workers.end(), [](const worker& w) {
                            return w.running.load(std::memory_order_acquire);
                        });
            if (!busy) {
                wait_for_change(posted, seen); // sleeps until the next step
                continue;
            }
            // Looks again while steps are under way: when one could be late next, or after
            // `grace` (a step posted meanwhile is late no sooner).
            auto next = raise_starving();
            auto until = clock::time_point(std::chrono::nanoseconds(next ? *next : 0));
            std::this_thread::sleep_until(next ? until : clock::now() + grace);
        }
    }
};

connect_workers::connect_workers() : s_(std::make_unique<state>())
{
    s_->mode = idle_can_be_raised() ? priority::idle_raised_when_late : priority::nice_10;
    for (auto& w : s_->workers)
        w.thread = std::thread([this, &w] { s_->work(w); });
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
    s_->stop.store(true, std::memory_order_release);
    s_->posted.fetch_add(1, std::memory_order_release);
    wake_all(s_->posted);
    for (auto& w : s_->workers)
        w.thread.join();
    if (s_->watchdog.joinable())
        s_->watchdog.join();
    // Spares are detached. One still blocked in a step keeps the state: it is left, not freed.
    auto until = clock::now() + std::chrono::seconds(1);
    while (s_->spare_count.load(std::memory_order_acquire) > 0 && clock::now() < until) {
        s_->posted.fetch_add(1, std::memory_order_release);
        wake_all(s_->posted);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (s_->spare_count.load(std::memory_order_acquire) > 0) {
        (void)s_.release();
        return;
    }
    while (s_->next_job()) {
    }
}

namespace {

// Guards instance(). fork() copies only the calling thread: a child forked while another
// thread held this lock would wait for it forever in its first connect. So fork() takes it
// first, and parent and child each let it go.
std::mutex instance_mutex;
void lock_before_fork()
{
    instance_mutex.lock();
}
void unlock_after_fork()
{
    instance_mutex.unlock();
}
// At load time, before any thread of the application can hold the lock.
[[maybe_unused]] const int fork_handlers =
    ::pthread_atfork(&lock_before_fork, &unlock_after_fork, &unlock_after_fork);

} // namespace

connect_workers& connect_workers::instance()
{
    // A process forked after the workers started has none (fork copies only the calling
    // thread): its connects would wait forever. So the child starts workers of its own. The
    // parent's object stays as it is: its threads cannot be joined in the child. Neither is
    // ever destroyed (a connect may still be running on a worker at exit).
    static connect_workers* workers = nullptr;
    static pid_t owner = 0;
    std::lock_guard lock(instance_mutex);
    if (!workers || owner != ::getpid()) {
        workers = new connect_workers();
        owner = ::getpid();
    }
    return *workers;
}

void connect_workers::post(std::function<void()> job)
{
    s_->last_post.set_now();
    auto* j = new state::job{std::move(job)};
    j->next = s_->inbox.load(std::memory_order_relaxed);
    while (!s_->inbox.compare_exchange_weak(j->next, j, std::memory_order_release,
                                            std::memory_order_relaxed)) {
    }
    s_->posted.fetch_add(1, std::memory_order_release);
    wake_all(s_->posted); // a worker and, when it sleeps, the watchdog
    if (s_->stuck.load(std::memory_order_acquire) > 0)
        add_spares();
}

// Only when a step is posted: a step given up on because its caller was cancelled usually
// returns within milliseconds, and needs no stand-in unless other steps come meanwhile.
void connect_workers::add_spares()
{
    for (;;) {
        int stuck = s_->stuck.load(std::memory_order_acquire);
        int n = s_->spare_count.load(std::memory_order_acquire);
        if (n >= std::min(stuck, max_spares)) {
            if (stuck > max_spares && !s_->all_spares_warned.exchange(true))
                logger()->warn("{} connect steps given up on still run inside libpq; all {} "
                               "spare connect workers are started, so other connects may wait",
                               stuck, max_spares);
            return;
        }
        if (!s_->spare_count.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel))
            continue;
        try {
            std::thread([s = s_.get()] { s->work_spare(); }).detach();
        } catch (const std::system_error& e) {
            s_->spare_count.fetch_sub(1, std::memory_order_acq_rel);
            logger()->warn("could not start a spare connect worker: {}", e.what());
            return;
        }
        logger()->warn("{} connect step(s) given up on still run inside libpq (blocked, most "
                       "likely); a spare connect worker stands in ({} running)",
                       stuck, n + 1);
    }
}

void connect_workers::step_abandoned()
{
    s_->stuck.fetch_add(1, std::memory_order_acq_rel);
}

void connect_workers::abandoned_step_returned()
{
    s_->stuck.fetch_sub(1, std::memory_order_acq_rel);
}

int connect_workers::spares() const noexcept
{
    return s_->spare_count.load(std::memory_order_acquire);
}

connect_workers::priority connect_workers::mode() const noexcept
{
    return s_->mode;
}

long connect_workers::times_raised() const noexcept
{
    return s_->times_raised.load(std::memory_order_relaxed);
}

} // namespace pgco::detail
