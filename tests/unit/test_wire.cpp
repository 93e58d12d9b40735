// The protocol messages pgco writes and reads itself for batches on the wire (src/wire.hpp),
// byte for byte as the PostgreSQL documentation's "Message Formats" lays them out, and the
// command tags of the results it assembles.
#include "wire.hpp"

#include <pgco/result.hpp>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <cstring>
#include <string>

using namespace std::string_literals;
namespace wire = pgco::detail::wire;

TEST(wire, bind_carries_formats_values_nulls_and_the_result_format)
{
    const char* values[] = {"\x00\x00\x00\x07", "hi", nullptr};
    int lengths[] = {4, 0, 0};
    int formats[] = {1, 0, 0};
    pgco::detail::params_view p;
    p.count = 3;
    p.values = values;
    p.lengths = lengths;
    p.formats = formats;
    std::string out;
    wire::put_bind(out, "pgco_1", p, 1);
    std::string body = "\0pgco_1\0"s       // unnamed portal, statement
                       "\0\3\0\1\0\0\0\0"s // 3 parameter formats: binary, text, text
                       "\0\3"s             // 3 values
                       "\0\0\0\4\0\0\0\7"s // 4 bytes (binary)
                       "\0\0\0\2hi"s       // text, without its NUL
                       "\xff\xff\xff\xff"s // NULL
                       "\0\1\0\1"s;        // one result format: binary
    std::string expected = "B"s + "\0\0\0"s + static_cast<char>(4 + body.size()) + body;
    EXPECT_EQ(out, expected);
}

TEST(wire, bind_without_formats_sends_text_and_execute_and_sync_are_fixed)
{
    const char* values[] = {"42"};
    pgco::detail::params_view p;
    p.count = 1;
    p.values = values;
    std::string out;
    wire::put_bind(out, "s", p, 0);
    wire::put_execute(out);
    wire::put_sync(out);
    std::string expected = "B\0\0\0\x15\0s\0\0\0\0\1\0\0\0\2"
                           "42\0\1\0\0"s
                           "E\0\0\0\x9\0\0\0\0\0"s
                           "S\0\0\0\4"s;
    EXPECT_EQ(out, expected);
}

TEST(wire, messages_are_read_only_when_complete)
{
    std::string in = "2\0\0\0\4"s + "C\0\0\0\x0dSELECT 1\0"s + "Z\0\0\0\5I"s;
    for (std::size_t cut = 0; cut <= in.size(); ++cut) {
        std::string_view part(in.data(), cut);
        std::size_t at = 0, need = 0;
        bool bad = false;
        wire::message m;
        std::string types;
        while (wire::next_message(part, at, m, need, bad))
            types += m.type;
        EXPECT_FALSE(bad);
        std::string whole = cut >= 25 ? "2CZ" : cut >= 19 ? "2C" : cut >= 5 ? "2" : "";
        EXPECT_EQ(types, whole) << "cut at " << cut;
        if (need != 0) // a header is there: how much the message needs
            EXPECT_GT(need, cut - at);
    }
    std::size_t at = 0, need = 0;
    bool bad = false;
    wire::message m;
    ASSERT_TRUE(wire::next_message(in, at, m, need, bad));
    ASSERT_TRUE(wire::next_message(in, at, m, need, bad));
    EXPECT_EQ(m.type, 'C');
    EXPECT_EQ(m.body, "SELECT 1\0"s);
}

TEST(wire, a_length_below_four_is_a_protocol_violation)
{
    std::string in = "D\0\0\0\3xyz"s;
    std::size_t at = 0, need = 0;
    bool bad = false;
    wire::message m;
    EXPECT_FALSE(wire::next_message(in, at, m, need, bad));
    EXPECT_TRUE(bad);
}

TEST(wire, error_fields_are_parsed_and_malformed_ones_refused)
{
    std::string body = "SERROR\0VERROR\0C22012\0Mdivision by zero\0Dwhy\0Hhow\0Fint.c\0\0"s;
    wire::error_fields ef;
    ASSERT_TRUE(wire::parse_error(body, ef));
    EXPECT_EQ(ef.severity, "ERROR");
    EXPECT_EQ(ef.sqlstate, "22012");
    EXPECT_EQ(ef.primary, "division by zero");
    EXPECT_EQ(ef.detail, "why");
    EXPECT_EQ(ef.hint, "how");
    wire::error_fields localized;
    const std::string german = "SFEHLER\0C42P01\0\0"s; // the fields point into it
    ASSERT_TRUE(wire::parse_error(german, localized));
    EXPECT_EQ(localized.severity, "FEHLER"); // no V field: the localized one
    wire::error_fields cut;
    EXPECT_FALSE(wire::parse_error("SERROR\0C220"s, cut));
    EXPECT_FALSE(wire::parse_error("SERROR\0"s, cut)); // no terminator
}

namespace {

pgco::result tagged(const char* tag)
{
    PGresult* r = PQmakeEmptyPGresult(nullptr, PGRES_COMMAND_OK);
    auto* copy = static_cast<char*>(PQresultAlloc(r, std::strlen(tag) + 1));
    std::strcpy(copy, tag);
    return pgco::result(r, copy);
}

} // namespace

TEST(wire, results_assembled_by_pgco_report_their_command_tag_as_libpq_would)
{
    EXPECT_EQ(tagged("INSERT 0 5").rows_affected(), 5u);
    EXPECT_EQ(tagged("INSERT 0 5").command_status(), "INSERT 0 5");
    EXPECT_EQ(tagged("UPDATE 12").rows_affected(), 12u);
    EXPECT_EQ(tagged("DELETE 0").rows_affected(), 0u);
    EXPECT_EQ(tagged("SELECT 100").rows_affected(), 100u);
    EXPECT_EQ(tagged("MERGE 3").rows_affected(), 3u);
    EXPECT_EQ(tagged("COPY 7").rows_affected(), 7u);
    EXPECT_EQ(tagged("CREATE TABLE").rows_affected(), 0u);
    pgco::result moved = tagged("UPDATE 4");
    pgco::result to = std::move(moved);
    EXPECT_EQ(to.rows_affected(), 4u);
    EXPECT_EQ(moved.command_status(), ""); // NOLINT(bugprone-use-after-move): says so
}
