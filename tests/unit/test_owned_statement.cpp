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
