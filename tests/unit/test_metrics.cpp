// to_prometheus: exact lines, and every line valid under the text exposition format 0.0.4.

#include <pgco/metrics.hpp>
#include <pgco/pool.hpp>

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

std::vector<std::string> lines_of(const std::string& text)
{
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    return lines;
}

bool has_line(const std::string& text, const std::string& line)
{
    for (const auto& l : lines_of(text))
        if (l == line)
            return true;
    return false;
}

pgco::pool_stats sample_stats()
{
    pgco::pool_stats s;
    s.open = 7;
    s.idle = 3;
    s.in_use = 4;
    s.connecting = 1;
    s.waiting = 12;
    s.acquired = 123456789012ULL;
    s.acquire_timeouts = 2;
    s.connections_opened = 9;
    s.connections_closed = 2;
    s.connect_failures = 5;
    s.closed_by_server = 1;
    s.health_check_failures = 3;
    s.reconnects = 4;
    s.query_retries = 6;
    s.statements_multiplexed = 800;
    s.pipeline_batches = 8;
    s.acquire_wait_p50 = 2500us;
    s.acquire_wait_p99 = 1200000us;
    return s;
}

// Checks the whole page against the format's grammar (comments, samples, label syntax, values)
// and its rules: one TYPE per metric, before its samples, and no series twice. Returns the
// samples by series (name plus labels).
std::map<std::string, std::string> check_page(const std::string& page)
{
    static const std::regex help_re(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) [^\n]*$)");
    static const std::regex type_re(
        R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
    static const std::regex sample_re(
        R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|[-+]Inf)$)re");

    EXPECT_FALSE(page.empty());
    EXPECT_EQ(page.back(), '\n') << "the last line must end with a line feed";
    std::map<std::string, std::string> types;
    std::set<std::string> helped;
    std::map<std::string, std::string> series;
    for (const auto& line : lines_of(page)) {
        std::smatch m;
        if (std::regex_match(line, m, help_re)) {
            EXPECT_TRUE(helped.insert(m[1]).second) << "second HELP: " << line;
        } else if (std::regex_match(line, m, type_re)) {
            EXPECT_TRUE(types.emplace(m[1], m[2]).second) << "second TYPE: " << line;
            for (const auto& [key, value] : series)
                EXPECT_FALSE(key.starts_with(m[1].str() + "{") || key == m[1].str())
                    << "TYPE after a sample of " << m[1];
        } else if (std::regex_match(line, m, sample_re)) {
            std::string name = m[1];
            EXPECT_TRUE(types.contains(name)) << "sample without TYPE: " << line;
            EXPECT_TRUE(helped.contains(name)) << "sample without HELP: " << line;
            if (types[name] == "counter")
                EXPECT_TRUE(name.ends_with("_total")) << line;
            EXPECT_TRUE(series.emplace(name + m[2].str(), m[3]).second) << "series twice: " << line;
        } else {
            ADD_FAILURE() << "invalid line: '" << line << "'";
        }
    }
    return series;
}

TEST(Metrics, RendersEveryFieldInTheExpositionFormat)
{
    auto page = pgco::to_prometheus(sample_stats());
    auto series = check_page(page);

    EXPECT_TRUE(has_line(page, "# HELP pgco_connections_open Connections open: idle, in use or "
                               "being checked."));
    EXPECT_TRUE(has_line(page, "# TYPE pgco_connections_open gauge"));
    EXPECT_TRUE(has_line(page, "pgco_connections_open 7"));
    EXPECT_TRUE(has_line(page, "# TYPE pgco_acquires_total counter"));
    EXPECT_TRUE(has_line(page, "pgco_acquires_total 123456789012"));
    EXPECT_TRUE(has_line(page, "# TYPE pgco_acquire_wait_seconds gauge"));
    EXPECT_TRUE(has_line(page, "pgco_acquire_wait_seconds{quantile=\"0.5\"} 0.0025"));
    EXPECT_TRUE(has_line(page, "pgco_acquire_wait_seconds{quantile=\"0.99\"} 1.2"));

    // One series per field of pool_stats: 5 gauges, 11 counters, 2 quantiles.
    std::map<std::string, std::string> expected = {
        {"pgco_connections_open", "7"},
        {"pgco_connections_idle", "3"},
        {"pgco_connections_in_use", "4"},
        {"pgco_connections_connecting", "1"},
        {"pgco_acquire_waiting", "12"},
        {"pgco_acquires_total", "123456789012"},
        {"pgco_acquire_timeouts_total", "2"},
        {"pgco_connections_opened_total", "9"},
        {"pgco_connections_closed_total", "2"},
        {"pgco_connect_failures_total", "5"},
        {"pgco_connections_closed_by_server_total", "1"},
        {"pgco_health_check_failures_total", "3"},
        {"pgco_reconnects_total", "4"},
        {"pgco_query_retries_total", "6"},
        {"pgco_statements_multiplexed_total", "800"},
        {"pgco_pipeline_batches_total", "8"},
        {"pgco_acquire_wait_seconds{quantile=\"0.5\"}", "0.0025"},
        {"pgco_acquire_wait_seconds{quantile=\"0.99\"}", "1.2"},
    };
    EXPECT_EQ(series, expected);
}

TEST(Metrics, ZeroStatsAreValid)
{
    auto page = pgco::to_prometheus(pgco::pool_stats{});
    auto series = check_page(page);
    EXPECT_EQ(series.size(), 18u);
    EXPECT_TRUE(has_line(page, "pgco_acquire_wait_seconds{quantile=\"0.99\"} 0"));
    EXPECT_TRUE(has_line(page, "pgco_connections_open 0"));
}

TEST(Metrics, PrefixAndLabelsGoOnEverySample)
{
    auto labels = pgco::prometheus_labels({{"pool", "main"}, {"note", "a \"q\" \\ b\nc"}});
    EXPECT_EQ(labels, R"(pool="main",note="a \"q\" \\ b\nc")");
    auto page = pgco::to_prometheus(sample_stats(), "app_db", labels);
    auto series = check_page(page);
    EXPECT_EQ(series.size(), 18u);
    EXPECT_TRUE(has_line(page, R"(app_db_connections_open{pool="main",note="a \"q\" \\ b\nc"} 7)"));
    EXPECT_TRUE(has_line(
        page,
        R"(app_db_acquire_wait_seconds{pool="main",note="a \"q\" \\ b\nc",quantile="0.5"} 0.0025)"));
    for (const auto& [key, value] : series)
        EXPECT_TRUE(key.starts_with("app_db_") && key.find("pool=\"main\"") != std::string::npos)
            << key;
}

TEST(Metrics, RejectsWhatWouldBreakThePage)
{
    pgco::pool_stats s;
    EXPECT_THROW(pgco::to_prometheus(s, ""), std::invalid_argument);
    EXPECT_THROW(pgco::to_prometheus(s, "9lives"), std::invalid_argument);
    EXPECT_THROW(pgco::to_prometheus(s, "my-app"), std::invalid_argument);
    for (const char* bad : {"pool=main", "pool=\"main", "pool=\"a\"b\"", "pool=\"x\",", "9=\"x\"",
                            "__name=\"x\"", "a=\"x\",a=\"y\"", "quantile=\"1\"",
                            "pool=\"bad\\escape\"", "pool=\"line\nfeed\"", "pool=\"a\" b=\"c\""})
        EXPECT_THROW(pgco::to_prometheus(s, "pgco", bad), std::invalid_argument) << bad;
    EXPECT_NO_THROW(pgco::to_prometheus(s, "pgco", R"(a="",b="\\ \" \n")"));
    EXPECT_THROW(pgco::prometheus_labels({{"bad-name", "x"}}), std::invalid_argument);
}

} // namespace
