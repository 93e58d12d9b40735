// Whether to read right after sending a request (src/early_read.hpp).
#include "early_read.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <random>

using namespace std::chrono_literals;
using pgco::detail::early_read;

TEST(early_read, reads_at_once_before_it_knows_better)
{
    early_read policy;
    EXPECT_TRUE(policy.after_send(4us));
}

TEST(early_read, reads_at_once_only_after_a_send_the_server_interrupted)
{
    // Sends of ~4 µs; one in three took the server's whole turn (~15 µs): the answer is there.
    early_read policy;
    std::minstd_rand rng(3);
    int wrong = 0;
    for (int i = 0; i < 3000; ++i) {
        bool interrupted = rng() % 3 == 0;
        auto took = (interrupted ? 15us : 4us) + std::chrono::nanoseconds(rng() % 800);
        if (policy.after_send(took) != interrupted && i > 20)
            ++wrong;
    }
    EXPECT_EQ(wrong, 0);
    EXPECT_GE(policy.quick(), 3500ns);
    EXPECT_LE(policy.quick(), 5000ns);
}

TEST(early_read, with_the_server_elsewhere_it_stops_reading_at_once)
{
    // Every send equally quick: the answer is never there yet, reading at once wastes a call.
    early_read policy;
    int early = 0;
    for (int i = 0; i < 1000; ++i)
        early += policy.after_send(3us + std::chrono::nanoseconds(i % 500)) ? 1 : 0;
    EXPECT_LE(early, 1); // the first, before it knew
}

TEST(early_read, one_freak_fast_send_does_not_stick)
{
    early_read policy;
    for (int i = 0; i < 200; ++i)
        policy.after_send(4us);
    for (int i = 0; i < 3; ++i)
        policy.after_send(0ns); // freaks: the usual 4 µs now looks interrupted
    EXPECT_TRUE(policy.after_send(4us));
    int early = 0;
    for (int i = 0; i < 1000; ++i)
        early += policy.after_send(4us) ? 1 : 0;
    EXPECT_LT(early, 100); // it recovers; it does not read at once after every usual send
    EXPECT_FALSE(policy.after_send(4us));
}
