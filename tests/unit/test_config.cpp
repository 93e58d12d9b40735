#include <pgco/config.hpp>
#include <pgco/error.hpp>

#include <gtest/gtest.h>

#include <cstdlib>
#include <ostream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using pgco::pool_options;

namespace {

struct good_case
{
    const char* name;
    std::string input;
    std::string conninfo;
    std::size_t connection_limit = 10;
    std::chrono::milliseconds pool_timeout = 20s;
    std::chrono::milliseconds connect_timeout = 10s;
};

// Names the case by its input rather than by its bytes when it fails.
void PrintTo(const good_case& c, std::ostream* os)
{
    *os << c.input;
}

class config_good : public testing::TestWithParam<good_case>
{};

TEST_P(config_good, parses_every_field)
{
    const auto& c = GetParam();
    auto options = pool_options::from_url(c.input);
    EXPECT_EQ(options.conninfo, c.conninfo);
    EXPECT_EQ(options.connection_limit, c.connection_limit);
    EXPECT_EQ(options.pool_timeout, c.pool_timeout);
    EXPECT_EQ(options.connect_timeout, c.connect_timeout);
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(config, config_good, testing::Values(
    good_case{"empty_means_libpq_defaults", "", ""},
    good_case{"blank", " \t\n", ""},
    good_case{"scheme_only", "postgresql://", "postgresql://"},
    good_case{"uri_untouched", "postgresql://u:p@localhost:5432/app?sslmode=disable",
              "postgresql://u:p@localhost:5432/app?sslmode=disable"},
    good_case{"short_scheme", "postgres://u@h/db?connection_limit=5", "postgres://u@h/db", 5},
    good_case{"connection_limit_max", "postgresql://h/db?connection_limit=100000",
              "postgresql://h/db", 100000},
    good_case{"pool_timeout_fraction", "postgresql://h/db?pool_timeout=0.5", "postgresql://h/db",
              10, 500ms},
    good_case{"pool_timeout_zero_is_no_limit", "postgresql://h/db?pool_timeout=0",
              "postgresql://h/db", 10, 0ms},
    good_case{"pool_timeout_one_day", "postgresql://h/db?pool_timeout=86400.000",
              "postgresql://h/db", 10, 86400s},
    good_case{"connect_timeout_whole", "postgresql://h/db?connect_timeout=20",
              "postgresql://h/db", 10, 20s, 20s},
    good_case{"connect_timeout_rounds_to_nearest", "postgresql://h/db?connect_timeout=1.2345",
              "postgresql://h/db", 10, 20s, 1235ms},
    good_case{"connect_timeout_rounds_down", "postgresql://h/db?connect_timeout=1.0004",
              "postgresql://h/db", 10, 20s, 1000ms},
    good_case{"tiny_timeout_is_one_ms", "postgresql://h/db?connect_timeout=0.0001",
              "postgresql://h/db", 10, 20s, 1ms},
    good_case{"leading_dot", "postgresql://h/db?pool_timeout=.25", "postgresql://h/db", 10, 250ms},
    good_case{"all_three_mixed_with_libpq_params",
              "postgresql://u:p@h:5433/db?sslmode=disable&connection_limit=3&application_name=x"
              "&pool_timeout=1.5&connect_timeout=2",
              "postgresql://u:p@h:5433/db?sslmode=disable&application_name=x", 3, 1500ms, 2s},
    good_case{"multi_host",
              "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write"
              "&connection_limit=3",
              "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write", 3},
    good_case{"percent_encoded_password", "postgresql://u:p%40ss%2Fw%3F@h/db?pool_timeout=5",
              "postgresql://u:p%40ss%2Fw%3F@h/db", 10, 5s},
    good_case{"raw_question_mark_in_password", "postgresql://u:pa?ss@h/db?connection_limit=2",
              "postgresql://u:pa?ss@h/db", 2},
    good_case{"original_encoding_kept",
              "postgresql://h/db?application_name=my%20app&connection_limit=2&options=-c%20x%3Dy",
              "postgresql://h/db?application_name=my%20app&options=-c%20x%3Dy", 2},
    good_case{"encoded_pgco_key", "postgresql://h/db?connection%5Flimit=4", "postgresql://h/db",
              4},
    good_case{"empty_query_segments_dropped", "postgresql://h/db?&sslmode=disable&&pool_timeout=1&",
              "postgresql://h/db?sslmode=disable", 10, 1s},
    good_case{"ssl_true_passed_to_libpq", "postgresql://h/db?ssl=true", "postgresql://h/db?ssl=true"},
    good_case{"surrounding_whitespace_trimmed", "  postgresql://h/db\n", "postgresql://h/db"},
    good_case{"keywords", "host=localhost port=5432 dbname=app",
              "host='localhost' port='5432' dbname='app'"},
    good_case{"keywords_quotes_and_escapes",
              R"(host = localhost  password='it\'s a \\ secret' connection_limit = 7 )"
              R"(application_name=a\ b options='')",
              R"(host='localhost' password='it\'s a \\ secret' application_name='a b' options='')",
              7},
    good_case{"keywords_pgco_quoted", "pool_timeout='2.5' dbname=x connect_timeout = 3",
              "dbname='x'", 10, 2500ms, 3s},
    good_case{"keywords_only_pgco", "connection_limit=1", "", 1}),
    [](const auto& info) { return std::string(info.param.name); });
// clang-format on

struct bad_case
{
    const char* name;
    std::string input;
    std::string names;             // must appear in what()
    std::string secret = "s3cr3t"; // must not
};

void PrintTo(const bad_case& c, std::ostream* os)
{
    *os << c.input;
}

class config_bad : public testing::TestWithParam<bad_case>
{};

TEST_P(config_bad, is_rejected_without_the_password)
{
    const auto& c = GetParam();
    try {
        pool_options::from_url(c.input);
        FAIL() << "accepted: " << c.input;
    } catch (const pgco::error& e) {
        EXPECT_EQ(e.code(), pgco::errc::invalid_configuration);
        EXPECT_NE(std::string(e.what()).find(c.names), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find(c.secret), std::string::npos) << e.what();
    }
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(config, config_bad, testing::Values(
    bad_case{"non_numeric", "postgresql://u:s3cr3t@h/db?pool_timeout=abc", "'pool_timeout': 'abc'"},
    bad_case{"negative", "postgresql://u:s3cr3t@h/db?connect_timeout=-1", "connect_timeout"},
    bad_case{"zero_limit", "postgresql://u:s3cr3t@h/db?connection_limit=0", "connection_limit"},
    bad_case{"limit_too_large", "postgresql://h/db?connection_limit=100001", "connection_limit"},
    bad_case{"limit_overflow", "postgresql://h/db?connection_limit=99999999999999999999999",
             "connection_limit"},
    bad_case{"limit_fraction", "postgresql://h/db?connection_limit=2.5", "connection_limit"},
    bad_case{"limit_plus_sign", "postgresql://h/db?connection_limit=%2B3", "connection_limit"},
    bad_case{"empty_value", "postgresql://u:s3cr3t@h/db?pool_timeout=", "pool_timeout"},
    bad_case{"no_equals", "postgresql://h/db?connection_limit", "connection_limit"},
    bad_case{"lone_dot", "postgresql://h/db?pool_timeout=.", "pool_timeout"},
    bad_case{"trailing_garbage", "postgresql://h/db?connect_timeout=5s", "connect_timeout"},
    bad_case{"two_dots", "postgresql://h/db?connect_timeout=1.2.3", "connect_timeout"},
    bad_case{"exponent", "postgresql://h/db?pool_timeout=1e3", "pool_timeout"},
    bad_case{"infinity", "postgresql://h/db?pool_timeout=inf", "pool_timeout"},
    bad_case{"over_one_day", "postgresql://h/db?pool_timeout=86400.001", "pool_timeout"},
    bad_case{"duplicate", "postgresql://u:s3cr3t@h/db?connection_limit=1&connection_limit=2",
             "connection_limit"},
    bad_case{"duplicate_encoded", "postgresql://h/db?pool_timeout=1&pool%5Ftimeout=1",
             "pool_timeout"},
    bad_case{"short_password_keeps_message", "postgresql://u:o@h/db?pool_timeout=x",
             "'pool_timeout': 'x'"},
    bad_case{"short_password_scrubbed_from_libpq", "postgresql://u:o@[::1/db", "u:***@[::1",
             ":o@"},
    bad_case{"unknown_parameter", "postgresql://u:s3cr3t@h/db?foo=1", "\"foo\""},
    bad_case{"misspelt_password_parameter", "postgresql://h/db?pasword=s3cr3t", "pasword"},
    bad_case{"malformed_uri", "postgresql://u:s3cr3t@[::1/db", "IPv6"},
    bad_case{"bad_percent_encoding_in_password", "postgresql://u:s3cr3t%zz@h/db",
             "percent-encoded"},
    bad_case{"bad_percent_encoding_in_query", "postgresql://u:s3cr3t@h/db?application_name=%zz",
             "'application_name'"},
    bad_case{"bad_percent_encoding_in_password_parameter",
             "postgresql://h/db?password=s3cr3t%zz&sslmode=disable", "'password'"},
    bad_case{"unencoded_character_in_query", "postgresql://h/db?application_name=a b",
             "'application_name'"},
    bad_case{"unencoded_slash_in_password", "postgresql://u:s3/cr3t@h/db", "%2F", "s3/cr3t"},
    bad_case{"unencoded_at_in_password", "postgresql://u:s3@cr3t@h/db", "%40", "cr3t"},
    bad_case{"unsupported_scheme", "mysql://u:s3cr3t@h/db", "'mysql'"},
    bad_case{"scheme_is_case_sensitive", "POSTGRESQL://u:s3cr3t@h/db", "'POSTGRESQL'"},
    bad_case{"keywords_non_numeric", "password=s3cr3t connection_limit=x", "connection_limit"},
    bad_case{"keywords_duplicate", "password=s3cr3t pool_timeout=1 pool_timeout = '2'",
             "pool_timeout"},
    bad_case{"keywords_unknown", "password=s3cr3t foo=1", "\"foo\""},
    bad_case{"keywords_unterminated_quote", "host=h password='s3cr3t", "unterminated"},
    bad_case{"keywords_missing_equals", "password=s3 cr3t", "missing '='", "cr3t"},
    bad_case{"nul_character", std::string("host=h\0password=s3cr3t", 22), "NUL"}),
    [](const auto& info) { return std::string(info.param.name); });
// clang-format on

TEST(config, error_is_invalid_argument)
{
    try {
        pool_options::from_url("postgresql://h/db?pool_timeout=x");
        FAIL();
    } catch (const pgco::error& e) {
        EXPECT_EQ(e.code(), std::errc::invalid_argument);
        EXPECT_TRUE(e.sqlstate().empty());
    }
}

struct redact_case
{
    const char* name;
    std::string input;
    std::string expected;
};

void PrintTo(const redact_case& c, std::ostream* os)
{
    *os << c.input;
}

class config_redact : public testing::TestWithParam<redact_case>
{};

TEST_P(config_redact, hides_the_password)
{
    EXPECT_EQ(pgco::redact_conninfo(GetParam().input), GetParam().expected);
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(config, config_redact, testing::Values(
    redact_case{"empty", "", ""},
    redact_case{"uri_without_password", "postgresql://u@h/db", "postgresql://u@h/db"},
    redact_case{"uri_user_info", "postgresql://u:s3cr3t@h/db", "postgresql://u:***@h/db"},
    redact_case{"uri_empty_password", "postgresql://u:@h/db", "postgresql://u:@h/db"},
    redact_case{"uri_encoded_password", "postgres://u:p%40ss@h/db", "postgres://u:***@h/db"},
    redact_case{"uri_multi_host_and_query",
                "postgresql://u:s3cr3t@h1:5432,h2:5433/db?password=other&sslmode=disable",
                "postgresql://u:***@h1:5432,h2:5433/db?password=***&sslmode=disable"},
    redact_case{"uri_encoded_key", "postgres://h/db?pass%77ord=s3cr3t&sslpassword=k",
                "postgres://h/db?pass%77ord=***&sslpassword=***"},
    redact_case{"uri_keeps_pgco_params", "postgresql://u:s3cr3t@h/db?connection_limit=5",
                "postgresql://u:***@h/db?connection_limit=5"},
    redact_case{"uri_malformed", "postgresql://u:s3cr3t@[::1/db", "postgresql://***"},
    redact_case{"uri_unknown_parameter", "postgresql://h/db?pasword=s3cr3t", "postgresql://***"},
    redact_case{"uri_unencoded_slash", "postgres://u:s3/cr3t@h/db", "postgres://***"},
    redact_case{"uri_bad_query", "postgresql://h/db?password=s3cr3t%zz", "postgresql://***"},
    redact_case{"other_scheme", "mysql://u:s3cr3t@h/db", "mysql://***"},
    redact_case{"keywords", "host=h password=s3cr3t dbname='my db'",
                "password='***' dbname='my db' host='h'"},
    redact_case{"keywords_escapes", R"(user='o\'neil' sslpassword=s3\ cr3t)",
                R"(user='o\'neil' sslpassword='***')"},
    redact_case{"keywords_keep_pgco_params", "host=h connection_limit=4",
                "host='h' connection_limit='4'"},
    redact_case{"keywords_unterminated", "host='h password=s3cr3t",
                "<unparsable connection string>"},
    redact_case{"keywords_unknown", "pasword=s3cr3t", "<unparsable connection string>"},
    redact_case{"keywords_missing_equals", "host=h s3cr3t", "<unparsable connection string>"}),
    [](const auto& info) { return std::string(info.param.name); });
// clang-format on

TEST(config, redacted_hides_the_parsed_password)
{
    auto options = pool_options::from_url("postgresql://u:s3cr3t@h/db?connection_limit=2");
    EXPECT_EQ(options.redacted(), "postgresql://u:***@h/db");
    EXPECT_EQ(pool_options::from_url("password=s3cr3t host=h").redacted(),
              "password='***' host='h'");
}

// The URLs of docs/high-availability.md: two loopback hosts with ports, libpq's
// target_session_attrs kept for libpq, pgco's retry and PgBouncer parameters taken out.
TEST(config, multi_host_failover_url)
{
    auto options = pool_options::from_url(
        "postgresql://u:s3cr3t@127.0.0.1:5001,127.0.0.1:5002/db?target_session_attrs=read-write"
        "&retry_attempts=4&retry_backoff=0,0.5,1,2&connect_timeout=2&connection_limit=6");
    EXPECT_EQ(
        options.conninfo,
        "postgresql://u:s3cr3t@127.0.0.1:5001,127.0.0.1:5002/db?target_session_attrs=read-write");
    EXPECT_EQ(options.retry.attempts, 4u);
    EXPECT_EQ(options.retry.backoff,
              (std::vector<std::chrono::milliseconds>{0ms, 500ms, 1000ms, 2000ms}));
    EXPECT_EQ(options.connect_timeout, 2s);
    EXPECT_EQ(options.connection_limit, 6u);
    EXPECT_EQ(options.redacted(), "postgresql://u:***@127.0.0.1:5001,127.0.0.1:5002/db?"
                                  "target_session_attrs=read-write");

    for (std::string attrs : {"prefer-standby", "read-only", "standby", "primary", "any"}) {
        auto read = pool_options::from_url("postgresql://u:p@[::1]:5001,127.0.0.1:5002/db?"
                                           "target_session_attrs=" +
                                           attrs);
        EXPECT_EQ(read.conninfo, "postgresql://u:p@[::1]:5001,127.0.0.1:5002/db?"
                                 "target_session_attrs=" +
                                     attrs);
    }
    // The same in libpq's key=value form: comma-separated hosts and ports.
    auto keywords = pool_options::from_url("host=127.0.0.1,127.0.0.1 port=5001,5002 dbname=db "
                                           "target_session_attrs=read-write retry_backoff=0,1");
    EXPECT_EQ(keywords.conninfo, "host='127.0.0.1,127.0.0.1' port='5001,5002' dbname='db' "
                                 "target_session_attrs='read-write'");
    EXPECT_EQ(keywords.retry.backoff, (std::vector<std::chrono::milliseconds>{0ms, 1000ms}));
}

TEST(config, pgbouncer_flag)
{
    auto on = pool_options::from_url("postgresql://u:p@127.0.0.1:6432/db?pgbouncer=true");
    EXPECT_TRUE(on.pgbouncer);
    EXPECT_EQ(on.conninfo, "postgresql://u:p@127.0.0.1:6432/db");
    EXPECT_FALSE(pool_options::from_url("postgresql://h/db").pgbouncer);
    EXPECT_FALSE(pool_options::from_url("postgresql://h/db?pgbouncer=0").pgbouncer);
    EXPECT_TRUE(pool_options::from_url("host=h pgbouncer=1").pgbouncer);
    EXPECT_THROW(pool_options::from_url("postgresql://h/db?pgbouncer=yes"), pgco::error);
}

TEST(config, max_connecting)
{
    EXPECT_EQ(pool_options{}.max_connecting, 2u);
    auto o = pool_options::from_url("postgresql://h/db?max_connecting=1&connection_limit=4");
    EXPECT_EQ(o.max_connecting, 1u);
    EXPECT_EQ(o.conninfo, "postgresql://h/db");
    EXPECT_EQ(pool_options::from_url("host=h max_connecting=7").max_connecting, 7u);
    for (auto bad : {"0", "-1", "x", "100001"}) {
        try {
            pool_options::from_url(std::string("postgresql://h/db?max_connecting=") + bad);
            ADD_FAILURE() << "accepted max_connecting=" << bad;
        } catch (const pgco::error& e) {
            EXPECT_NE(std::string(e.what()).find("max_connecting"), std::string::npos) << e.what();
        }
    }
}

class config_env : public testing::Test
{
protected:
    static constexpr const char* name = "PGCO_TEST_CONFIG_URL";
    void TearDown() override { unsetenv(name); }
};

TEST_F(config_env, reads_the_variable)
{
    setenv(name, "postgresql://h/db?connection_limit=3&pool_timeout=1", 1);
    auto options = pool_options::from_env(name);
    EXPECT_EQ(options.conninfo, "postgresql://h/db");
    EXPECT_EQ(options.connection_limit, 3u);
    EXPECT_EQ(options.pool_timeout, 1s);
}

TEST_F(config_env, empty_variable_means_libpq_defaults)
{
    setenv(name, "", 1);
    EXPECT_EQ(pool_options::from_env(name).conninfo, "");
}

TEST_F(config_env, unset_variable_is_named)
{
    unsetenv(name);
    try {
        pool_options::from_env(name);
        FAIL();
    } catch (const pgco::error& e) {
        EXPECT_EQ(e.code(), pgco::errc::invalid_configuration);
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
}

TEST_F(config_env, invalid_value_names_variable_and_parameter)
{
    setenv(name, "postgresql://u:s3cr3t@h/db?connection_limit=0", 1);
    try {
        pool_options::from_env(name);
        FAIL();
    } catch (const pgco::error& e) {
        std::string what = e.what();
        EXPECT_EQ(e.code(), pgco::errc::invalid_configuration);
        EXPECT_NE(what.find(name), std::string::npos) << what;
        EXPECT_NE(what.find("connection_limit"), std::string::npos) << what;
        EXPECT_EQ(what.find("s3cr3t"), std::string::npos) << what;
    }
}

} // namespace
