// The small containers of the statement path (src/ring_queue.hpp, src/spare_vector.hpp).
#include "ring_queue.hpp"
#include "spare_vector.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <random>

using pgco::detail::ring_queue;
using pgco::detail::spare_vector;

TEST(ring_queue, behaves_like_a_deque_through_growth_and_wrap_around)
{
    ring_queue<int> q;
    std::deque<int> model;
    std::minstd_rand rng(7);
    int next = 0;
    for (int step = 0; step < 20000; ++step) {
        switch (rng() % 4) {
        case 0:
        case 1:
            q.push_back(next);
            model.push_back(next++);
            break;
        case 2:
            q.push_front(next);
            model.push_front(next++);
            break;
        default:
            if (!model.empty()) {
                ASSERT_EQ(q.front(), model.front());
                q.pop_front();
                model.pop_front();
            }
        }
        ASSERT_EQ(q.size(), model.size());
        ASSERT_EQ(q.empty(), model.empty());
        if (step % 97 == 0)
            for (std::size_t i = 0; i < model.size(); ++i)
                ASSERT_EQ(q[i], model[i]) << "at " << i << ", step " << step;
    }
}

TEST(ring_queue, pop_front_releases_the_element_at_once)
{
    ring_queue<std::shared_ptr<int>> q;
    auto p = std::make_shared<int>(1);
    q.push_back(p);
    q.push_back(std::make_shared<int>(2));
    EXPECT_EQ(p.use_count(), 2);
    q.pop_front();
    EXPECT_EQ(p.use_count(), 1); // not kept alive by a slot waiting for reuse
    ASSERT_EQ(q.size(), 1u);
    EXPECT_EQ(*q.front(), 2);
}

TEST(ring_queue, swap_exchanges_contents)
{
    ring_queue<int> a, b;
    for (int i = 0; i < 20; ++i)
        a.push_back(i);
    a.pop_front();
    a.swap(b);
    EXPECT_TRUE(a.empty());
    ASSERT_EQ(b.size(), 19u);
    EXPECT_EQ(b.front(), 1);
    EXPECT_EQ(b[18], 19);
}

TEST(spare_vector, a_dropped_vector_lends_its_buffer_to_the_next)
{
    const int* first = nullptr;
    {
        spare_vector<int> v;
        v->assign(100, 1);
        first = v->data();
    }
    spare_vector<int> w;
    EXPECT_TRUE(w->empty());        // cleared
    EXPECT_GE(w->capacity(), 100u); // but its buffer kept
    EXPECT_EQ(w->data(), first);
}

TEST(spare_vector, a_moved_from_vector_does_not_take_a_place_in_the_stock)
{
    {
        spare_vector<long> v;
        v->assign(50, 1);
        spare_vector<long> moved(std::move(v)); // v is left empty, without a buffer
        spare_vector<long> again(std::move(moved));
    } // the one with the buffer goes back first or last: either way it must be found
    spare_vector<long> w;
    EXPECT_GE(w->capacity(), 50u);
}
