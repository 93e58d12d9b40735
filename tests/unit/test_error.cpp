// Error codes, messages and classification, without a server.

#include <pgco/error.hpp>

#include <gtest/gtest.h>

TEST(error, codes_have_a_category_and_familiar_messages)
{
    std::error_code ec = pgco::errc::connection_lost;
    EXPECT_STREQ(ec.category().name(), "pgco");
    EXPECT_NE(ec.message().find("P1017"), std::string::npos);
    EXPECT_NE(make_error_code(pgco::errc::cannot_connect).message().find("P1001"),
              std::string::npos);
    EXPECT_NE(make_error_code(pgco::errc::connect_timeout).message().find("P1002"),
              std::string::npos);
    EXPECT_EQ(ec, std::errc::connection_reset);
    EXPECT_EQ(std::error_code(pgco::errc::cancelled), std::errc::operation_canceled);
    EXPECT_EQ(std::error_code(pgco::errc::connect_timeout), std::errc::timed_out);
}

TEST(error, exception_carries_server_fields)
{
    pgco::error e(pgco::errc::server_error, "42P01: relation \"x\" does not exist", "42P01",
                  "relation \"x\" does not exist", "some detail", "some hint", true);
    EXPECT_EQ(e.code(), pgco::errc::server_error);
    EXPECT_EQ(e.sqlstate(), "42P01");
    EXPECT_EQ(e.detail(), "some detail");
    EXPECT_EQ(e.hint(), "some hint");
    EXPECT_TRUE(e.request_sent());
    EXPECT_TRUE(pgco::was_request_sent(e));
    EXPECT_NE(std::string(e.what()).find("42P01"), std::string::npos);
}

TEST(error, connection_classification)
{
    EXPECT_TRUE(pgco::is_connection_error(make_error_code(pgco::errc::cannot_connect)));
    EXPECT_TRUE(pgco::is_connection_error(make_error_code(pgco::errc::connect_timeout)));
    EXPECT_TRUE(pgco::is_connection_error(make_error_code(pgco::errc::connection_lost)));
    EXPECT_FALSE(pgco::is_connection_error(make_error_code(pgco::errc::server_error)));
    EXPECT_FALSE(pgco::is_connection_error(std::make_error_code(std::errc::connection_reset)));

    for (const char* state : {"08000", "08006", "08003", "57P01", "57P02", "57P03"})
        EXPECT_TRUE(pgco::is_connection_sqlstate(state)) << state;
    for (const char* state : {"42P01", "23505", "40001", "28P01", "", "57014"})
        EXPECT_FALSE(pgco::is_connection_sqlstate(state)) << state;

    pgco::error shutdown(pgco::errc::server_error, "57P01", "57P01", "terminating", "", "", true);
    EXPECT_TRUE(pgco::is_connection_error(shutdown));
    pgco::error syntax(pgco::errc::server_error, "42601", "42601", "syntax", "", "", true);
    EXPECT_FALSE(pgco::is_connection_error(syntax));
}
