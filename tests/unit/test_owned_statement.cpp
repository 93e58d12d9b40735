// A statement copied for later (multiplexing, batches): src/connection.cpp, owned_statement.
#include <pgco/batch.hpp>

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

using pgco::detail::owned_statement;

namespace {

owned_statement make(const std::string& text, const char* value)
{
    const std::string text_value = value; // the pack points into it
    pgco::detail::param_pack<2> pack(text_value, 7);
    owned_statement s;
    s.assign(text, pack.view());
    return s;
}

// The parameters as libpq would read them.
void expect_params(const owned_statement& s, const char* value)
{
    auto v = s.view();
    ASSERT_EQ(v.count, 2);
    ASSERT_NE(v.values[0], nullptr);
    EXPECT_EQ(v.formats[0], 0);
    EXPECT_STREQ(v.values[0], value); // text: up to its NUL
    ASSERT_NE(v.values[1], nullptr);
    EXPECT_EQ(v.formats[1], 1); // an int goes in binary
}

} // namespace

TEST(owned_statement, its_parameters_survive_moves_of_short_strings)
{
    // Short strings live inside the statement: a move relocates them, so the pointers libpq
    // gets must follow.
    std::vector<owned_statement> all;
    for (int i = 0; i < 40; ++i) // the vector grows and moves them several times
        all.push_back(make("SELECT $1::text, $2::int", ("v" + std::to_string(i)).c_str()));
    for (int i = 0; i < 40; ++i)
        expect_params(all[static_cast<std::size_t>(i)], ("v" + std::to_string(i)).c_str());
    owned_statement moved;
    moved = std::move(all[3]);
    expect_params(moved, "v3");
}

TEST(owned_statement, a_copy_points_into_its_own_values)
{
    std::vector<owned_statement> all;
    all.push_back(make("SELECT $1::text, $2::int", "short"));
    owned_statement copy = all[0];
    owned_statement assigned;
    assigned = all[0];
    all.clear(); // the original's buffers are gone
    expect_params(copy, "short");
    expect_params(assigned, "short");

    pgco::batch b; // and a batch, made of them, copies
    b.add("SELECT $1::int", 1);
    pgco::batch c = b;
    EXPECT_EQ(c.size(), 1u);
}

TEST(owned_statement, reuse_takes_the_new_values_and_keeps_nulls_null)
{
    owned_statement s = make("SELECT $1::text, $2::int", "first");
    const std::string longer = "a much longer value than the first one";
    pgco::detail::param_pack<2> again(longer, 8);
    s.assign("SELECT $1::text, $2::int", again.view());
    expect_params(s, "a much longer value than the first one");

    const std::optional<std::string> none;
    pgco::detail::param_pack<1> null(none);
    s.assign("SELECT $1::text", null.view());
    auto v = s.view();
    ASSERT_EQ(v.count, 1);
    EXPECT_EQ(v.values[0], nullptr);
    EXPECT_EQ(s.sql(), "SELECT $1::text");
}

TEST(batch, refilled_after_clear_holds_just_the_new_statements)
{
    pgco::batch b;
    const std::string one = "one", two = "two", three = "three";
    b.add("SELECT $1::text", one).add("SELECT $1::text, $2::int", two, 2).add("SELECT 3");
    ASSERT_EQ(b.size(), 3u);
    b.clear();
    EXPECT_TRUE(b.empty());
    EXPECT_TRUE(b.statements().empty());

    const std::string four = "a value longer than the one this statement held before";
    b.add("SELECT $1::text, $2::int", four, 4); // reuses the first statement
    ASSERT_EQ(b.size(), 1u);
    auto s = b.statements();
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].sql(), "SELECT $1::text, $2::int");
    auto v = s[0].view();
    ASSERT_EQ(v.count, 2);
    EXPECT_STREQ(v.values[0], four.c_str());

    // A statement that cannot be added leaves the batch as it was, spare or not.
    const std::string nul("x\0y", 3);
    EXPECT_THROW(b.add("SELECT $1::text", nul), pgco::error);
    EXPECT_THROW(b.add(std::string_view("SELECT 1\0 WHERE false", 21)), pgco::error);
    EXPECT_EQ(b.size(), 1u);
    b.add("SELECT $1::text", three);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_STREQ(b.statements()[1].view().values[0], three.c_str());
    EXPECT_STREQ(b.statements()[0].view().values[0], four.c_str());
}
