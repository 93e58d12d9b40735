// The threads that run libpq's connect steps: every step runs once, and a step finishes
// promptly even on a CPU that something else keeps busy (idle-priority threads would starve
// there without the watchdog that raises them).
//
// The saturation tests run in a child process of their own (a "threadsafe" death test
// re-executes the binary): it pins itself to one CPU before the workers start, so they share
// that CPU with the hogs.

#include "connect_workers.hpp"

#include <gtest/gtest.h>

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using pgco::detail::connect_workers;

namespace {

/// Waits until `n` calls of `done()` were made, or `limit` passed.
class countdown
{
public:
    explicit countdown(int n) : left_(n) {}

    void done()
    {
        std::lock_guard lock(m_);
        if (--left_ == 0)
            cv_.notify_all();
    }

    bool wait(std::chrono::milliseconds limit)
    {
        std::unique_lock lock(m_);
        return cv_.wait_for(lock, limit, [&] { return left_ <= 0; });
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    int left_;
};

double thread_cpu_ms()
{
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

/// Uses `ms` of CPU time, like the scram key derivation of one connect step (2-3 ms).
void burn_cpu(double ms)
{
    double start = thread_cpu_ms();
    volatile unsigned sink = 0;
    while (thread_cpu_ms() - start < ms)
        for (unsigned i = 0; i < 1000; ++i)
            sink = sink + i;
}

void pin_to(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) {
        std::perror("sched_setaffinity");
        std::_Exit(3);
    }
}

/// A process spinning on `cpu` at normal priority until killed (or 30 s at most).
pid_t start_hog(int cpu)
{
    pid_t pid = ::fork();
    if (pid == 0) {
        pin_to(cpu);
        ::alarm(30);
        volatile unsigned long sink = 0;
        for (;;)
            sink = sink + 1;
    }
    return pid;
}

/// One step of `cpu_ms` posted to the workers; how long it took until it was done, in ms (or
/// -1).
double time_one_step(double cpu_ms)
{
    countdown finished(1);
    auto t0 = std::chrono::steady_clock::now();
    connect_workers::instance().post([&] {
        burn_cpu(cpu_ms);
        finished.done();
    });
    if (!finished.wait(10s))
        return -1;
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// The body of a saturation test, in the child process: exit status 0 when two steps of 5 ms
/// of CPU each took less than 1.5 s (about 0.1 s here; at idle priority without the watchdog
/// they take 3-4 s each).
[[noreturn]] void step_on_saturated_cpu(bool hogs_are_other_processes)
{
    int cpu = ::sched_getcpu();
    pin_to(cpu < 0 ? 0 : cpu);
    cpu = ::sched_getcpu();
    time_one_step(0); // starts the workers on this CPU, before the hogs

    std::vector<pid_t> hogs;
    std::atomic<bool> stop{false};
    std::vector<std::thread> own;
    for (int i = 0; i < 2; ++i) {
        if (hogs_are_other_processes) {
            hogs.push_back(start_hog(cpu));
        } else {
            own.emplace_back([&stop] {
                volatile unsigned long sink = 0;
                while (!stop.load(std::memory_order_relaxed))
                    sink = sink + 1;
            });
        }
    }
    std::this_thread::sleep_for(50ms); // the hogs are running
    double first = time_one_step(5);
    double second = time_one_step(5);
    stop = true;
    for (auto& t : own)
        t.join();
    for (pid_t p : hogs) {
        ::kill(p, SIGKILL);
        ::waitpid(p, nullptr, 0);
    }
    auto& workers = connect_workers::instance();
    std::fprintf(
        stderr, "steps took %.1f ms and %.1f ms (workers at %s, raised %ld times)\n", first, second,
        workers.mode() == connect_workers::priority::nice_10 ? "nice 10"
                                                             : "idle priority, raised when late",
        workers.times_raised());
    bool prompt = first >= 0 && first < 1500 && second >= 0 && second < 1500;
    std::_Exit(prompt ? 0 : 1);
}

} // namespace

TEST(connect_workers, every_step_runs_exactly_once)
{
    constexpr int posters = 4, per_poster = 50;
    std::vector<std::atomic<int>> runs(posters * per_poster);
    countdown finished(posters * per_poster);
    std::vector<std::thread> threads;
    for (int p = 0; p < posters; ++p)
        threads.emplace_back([&, p] {
            for (int i = 0; i < per_poster; ++i)
                connect_workers::instance().post([&, n = p * per_poster + i] {
                    runs[n].fetch_add(1);
                    finished.done();
                });
        });
    for (auto& t : threads)
        t.join();
    ASSERT_TRUE(finished.wait(10s));
    for (std::size_t n = 0; n < runs.size(); ++n)
        EXPECT_EQ(runs[n].load(), 1) << "step " << n;
}

TEST(connect_workers, a_step_finishes_promptly_on_a_cpu_other_processes_saturate)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(step_on_saturated_cpu(true), testing::ExitedWithCode(0), "steps took");
}

TEST(connect_workers, a_step_finishes_promptly_on_a_cpu_this_process_saturates)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(step_on_saturated_cpu(false), testing::ExitedWithCode(0), "steps took");
}

TEST(connect_workers, a_process_forked_after_they_started_gets_workers_of_its_own)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto fork_and_post = [] {
        if (time_one_step(0) < 0) // the workers run in this process
            std::_Exit(2);
        // Lets the worker finish freeing that step before fork(): GCC 12's AddressSanitizer
        // does not lock its allocator around fork, so a child forked while another thread was
        // inside free() hung in its first allocation (seen once in CI).
        std::this_thread::sleep_for(200ms);
        pid_t child = ::fork();
        if (child == 0) {
            double ms = time_one_step(0);
            std::fprintf(stderr, "forked child: step %s\n", ms >= 0 ? "done" : "never ran");
            std::_Exit(ms >= 0 ? 0 : 1);
        }
        int status = 0;
        ::waitpid(child, &status, 0);
        std::_Exit(WIFEXITED(status) ? WEXITSTATUS(status) : 3);
    };
    EXPECT_EXIT(fork_and_post(), testing::ExitedWithCode(0), "forked child: step done");
}

TEST(connect_workers, a_process_forked_while_another_thread_asks_for_them_gets_workers)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto forks = [] {
        connect_workers::instance(); // started once, and settled, before the first fork()
        std::this_thread::sleep_for(200ms);
        std::atomic<bool> stop{false};
        std::atomic<long> asked{0};
        std::thread asker([&] {
            while (!stop.load()) {
                connect_workers::instance();
                asked.fetch_add(1);
            }
        });
        // Not while the new thread is still starting: AddressSanitizer's thread set-up holds
        // its allocator's locks, and a child forked then hangs in its first allocation.
        while (asked.load() < 1000)
            std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(50ms);
        int failed = 0;
        for (int i = 0; i < 100 && failed == 0; ++i) {
            pid_t child = ::fork();
            if (child == 0) {
                ::alarm(5); // a child stuck in instance() ends here
                std::_Exit(time_one_step(0) >= 0 ? 0 : 1);
            }
            int status = 0;
            ::waitpid(child, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                failed = i + 1;
        }
        stop = true;
        asker.join();
        if (failed != 0) {
            std::fprintf(stderr, "child %d of 100 got no workers\n", failed);
            std::_Exit(1);
        }
        std::fprintf(stderr, "100 children got workers\n");
        std::_Exit(0);
    };
    EXPECT_EXIT(forks(), testing::ExitedWithCode(0), "100 children got workers");
}

// Two steps blocked inside libpq (a client certificate that is a pipe nobody writes) hold both
// workers after the loop gave up on them: spares stand in, so the next connect's steps still
// run, and they end once the blocked steps have returned.
TEST(connect_workers, steps_given_up_on_while_blocked_do_not_hold_up_the_next)
{
    auto& workers = connect_workers::instance();
    ASSERT_EQ(workers.spares(), 0);
    std::mutex m;
    std::condition_variable cv;
    bool release = false;
    countdown blocking(2), returned(2);
    for (int i = 0; i < 2; ++i)
        workers.post([&] {
            blocking.done();
            std::unique_lock lock(m);
            cv.wait_for(lock, 20s, [&] { return release; });
            lock.unlock();
            connect_workers::instance().abandoned_step_returned(); // as a given-up step does
            returned.done();
        });
    ASSERT_TRUE(blocking.wait(5s)) << "the two workers did not take the blocking steps";
    workers.step_abandoned();
    workers.step_abandoned();
    EXPECT_EQ(workers.spares(), 0) << "spares start only when a step comes";

    auto next = std::make_shared<countdown>(1); // may outlive the test if it fails
    workers.post([next] { next->done(); });
    EXPECT_TRUE(next->wait(2s)) << "a step waited behind the blocked ones";
    EXPECT_EQ(workers.spares(), 2);

    // At most max_spares, however many steps are given up on.
    for (int i = 2; i < connect_workers::max_spares + 3; ++i)
        workers.step_abandoned();
    workers.post([] {});
    EXPECT_EQ(workers.spares(), connect_workers::max_spares);
    for (int i = 2; i < connect_workers::max_spares + 3; ++i)
        workers.abandoned_step_returned();

    {
        std::lock_guard lock(m);
        release = true;
    }
    cv.notify_all();
    ASSERT_TRUE(returned.wait(5s));
    // Spares end when they next wake; each step posted wakes them.
    auto until = std::chrono::steady_clock::now() + 5s;
    while (workers.spares() > 0 && std::chrono::steady_clock::now() < until) {
        auto ran = std::make_shared<countdown>(1);
        workers.post([ran] { ran->done(); });
        EXPECT_TRUE(ran->wait(2s));
        std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(workers.spares(), 0);
}
