// The per-connection statement cache (src/connection_impl.hpp): LRU order, eviction, and the
// shortcut for the statement found last, which must never answer for another statement.
#include "connection_impl.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

using pgco::oid;
using pgco::detail::params_view;
using pgco::detail::statement_cache;

namespace {

std::string key_of(const std::string& sql, const std::vector<oid>& types)
{
    std::string k;
    params_view p;
    p.count = static_cast<int>(types.size());
    p.types = types.data();
    pgco::detail::statement_key(k, sql, p);
    return k;
}

params_view view_of(const std::vector<oid>& types)
{
    params_view p;
    p.count = static_cast<int>(types.size());
    p.types = types.data();
    return p;
}

} // namespace

TEST(statement_cache, the_statement_found_last_is_found_without_its_key_and_only_it)
{
    statement_cache cache;
    cache.capacity = 4;
    std::vector<oid> int4{23}, int8{20}, none;
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int4)), cache.end()); // empty

    auto a = cache.add(key_of("SELECT $1", int4));
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int4)), a);
    // Same text, other parameter types: another statement on the server.
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int8)), cache.end());
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(none)), cache.end());
    // A prefix or an extension of the text is another statement too.
    EXPECT_EQ(cache.find_recent("SELECT $", view_of(int4)), cache.end());
    EXPECT_EQ(cache.find_recent("SELECT $12", view_of(int4)), cache.end());

    auto b = cache.add(key_of("SELECT $1", int8));
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int4)), cache.end()); // b is the recent one
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int8)), b);
    EXPECT_EQ(cache.find(key_of("SELECT $1", int4)), a);
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int4)), a);

    cache.erase(a);
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int4)), cache.end());
    EXPECT_EQ(cache.find(key_of("SELECT $1", int4)), cache.end());
    cache.clear();
    EXPECT_EQ(cache.find_recent("SELECT $1", view_of(int8)), cache.end());
    EXPECT_EQ(cache.size(), 0u);
}

TEST(statement_cache, keeps_least_recently_used_order_against_a_model)
{
    // Random finds (both ways), adds, erases and clears; every eviction must take the entry a
    // plain LRU list would drop, and the shortcut must answer exactly when the statement asked
    // for is the one found or added last.
    const std::vector<std::string> texts = {"SELECT 1", "SELECT 2", "SELECT $1", "SELECT $1 "};
    const std::vector<std::vector<oid>> type_sets = {{}, {23}, {20}, {23, 23}};
    std::minstd_rand rng(11);
    statement_cache cache;
    cache.capacity = 5;
    std::list<std::string> model; // keys, most recently used first
    std::optional<std::string> recent;
    std::map<std::string, std::string> key_of_name;

    auto touch = [&](const std::string& k) {
        model.remove(k);
        model.push_front(k);
        recent = k;
    };
    auto check_evictions = [&] {
        for (auto& name : cache.evicted) {
            ASSERT_TRUE(key_of_name.count(name));
            ASSERT_FALSE(model.empty());
            EXPECT_EQ(key_of_name[name], model.back());
            if (recent == model.back())
                recent.reset();
            model.pop_back();
        }
        cache.evicted.clear();
    };

    for (int step = 0; step < 20000; ++step) {
        const auto& sql = texts[rng() % texts.size()];
        const auto& types = type_sets[rng() % type_sets.size()];
        auto k = key_of(sql, types);
        bool present = std::find(model.begin(), model.end(), k) != model.end();
        switch (rng() % 10) {
        case 0:
        case 1:
        case 2: { // the shortcut, then the full look-up, as exec_params does
            auto it = cache.find_recent(sql, view_of(types));
            if (recent == k) {
                ASSERT_NE(it, cache.end());
                EXPECT_EQ(it->key, k);
                touch(k);
                break;
            }
            ASSERT_EQ(it, cache.end());
            it = cache.find(k);
            if (present) {
                ASSERT_NE(it, cache.end());
                EXPECT_EQ(it->key, k);
                touch(k);
            } else {
                EXPECT_EQ(it, cache.end());
            }
            break;
        }
        case 3:
        case 4:
        case 5:
        case 6:
            if (!present) {
                bool full = model.size() >= cache.capacity;
                auto it = cache.add(k);
                it->prepared = true; // so that its eviction, later, names it
                key_of_name[it->name] = k;
                if (full) {
                    ASSERT_EQ(cache.evicted.size(), 1u);
                    check_evictions();
                }
                model.push_front(k);
                recent = k;
            }
            break;
        case 7:
        case 8:
            if (present) {
                cache.erase(cache.find(k));
                model.remove(k);
                recent.reset(); // find made it the recent one; erase forgets it
                cache.evicted.clear();
            }
            break;
        default:
            if (rng() % 50 == 0) {
                cache.clear();
                model.clear();
                recent.reset();
            }
            break;
        }
        ASSERT_EQ(cache.size(), model.size()) << "step " << step;
    }
}
