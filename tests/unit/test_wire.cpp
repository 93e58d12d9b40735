// The protocol messages pgco writes and reads itself for batches on the wire (src/wire.hpp),
// byte for byte as the PostgreSQL documentation's "Message Formats" lays them out, and the
// results it assembles from what it read (src/wire_rows.hpp), which must answer as libpq's do.
#include "wire.hpp"
#include "wire_rows.hpp"

#include <pgco/result.hpp>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
    return pgco::result(pgco::detail::wire_rows::make(nullptr, false, 0, {}, {}, tag));
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

namespace {

// Two rows of (id int4, name text, note text): (7, "seven", NULL) and (8, "", "x\0y"), in
// `format`, built the way libpq builds results (`columns` set, values copied) and the way pgco
// does.
struct both_results
{
    pgco::result libpq, ours;
};

both_results two_rows(int format)
{
    std::vector<std::string> names = {"id", "name", "note"};
    std::vector<pgco::oid> types = {23, 25, 25};
    std::string id7 = format ? "\x00\x00\x00\x07"s : "7"s,
                id8 = format ? "\x00\x00\x00\x08"s : "8"s;
    const std::string* rows[2][3] = {{&id7, nullptr, nullptr}, {&id8, nullptr, nullptr}};
    std::string seven = "seven", empty, xy("x\0y", 3);
    rows[0][1] = &seven;
    rows[1][1] = &empty;
    rows[1][2] = &xy;

    PGresult* r = PQmakeEmptyPGresult(nullptr, PGRES_TUPLES_OK);
    PGresAttDesc attrs[3];
    for (int c = 0; c < 3; ++c)
        attrs[c] = PGresAttDesc{names[c].data(), 0, 0, format, types[c], -1, -1};
    EXPECT_TRUE(PQsetResultAttrs(r, 3, attrs));
    std::vector<pgco::detail::wire_rows::cell> cells;
    std::string bytes;
    for (int row = 0; row < 2; ++row)
        for (int c = 0; c < 3; ++c) {
            const std::string* v = rows[row][c];
            EXPECT_TRUE(PQsetvalue(r, row, c, v ? const_cast<char*>(v->data()) : nullptr,
                                   v ? static_cast<int>(v->size()) : -1));
            if (!v) {
                cells.push_back({0, -1});
                continue;
            }
            cells.push_back(
                {static_cast<std::uint32_t>(bytes.size()), static_cast<std::int32_t>(v->size())});
            bytes += *v;
            bytes += '\0';
        }
    auto shape = std::make_shared<pgco::detail::wire_shape>();
    shape->names = names;
    shape->types = types;
    return {pgco::result(r), pgco::result(pgco::detail::wire_rows::make(shape, format == 1, 2,
                                                                        cells, bytes, "SELECT 2"))};
}

} // namespace

TEST(wire, results_read_off_the_wire_answer_every_accessor_as_libpq_results_do)
{
    for (int format : {0, 1}) {
        SCOPED_TRACE(format ? "binary" : "text");
        auto [libpq, ours] = two_rows(format);
        ASSERT_EQ(ours.size(), libpq.size());
        ASSERT_EQ(ours.columns(), libpq.columns());
        // One past the end in each direction too: libpq answers those without failing.
        for (std::size_t c = 0; c <= 3; ++c) {
            EXPECT_EQ(ours.column_name(c), libpq.column_name(c)) << c;
            EXPECT_EQ(ours.column_type(c), libpq.column_type(c)) << c;
            EXPECT_EQ(ours.is_binary(c), libpq.is_binary(c)) << c;
            for (std::size_t row = 0; row <= 2; ++row) {
                EXPECT_EQ(ours.is_null(row, c), libpq.is_null(row, c)) << row << "," << c;
                EXPECT_EQ(ours.value(row, c), libpq.value(row, c)) << row << "," << c;
                EXPECT_EQ(ours.value(row, c).data() == nullptr,
                          libpq.value(row, c).data() == nullptr)
                    << row << "," << c;
            }
        }
        // Text values are NUL-terminated, as libpq's are.
        EXPECT_STREQ(ours.value(0, 1).data(), "seven");
        struct row
        {
            int id;
            std::string name;
            std::optional<std::string> note;
        };
        auto mine = ours.as<row>();
        auto theirs = libpq.as<row>();
        ASSERT_EQ(mine.size(), 2u);
        for (std::size_t i = 0; i < 2; ++i) {
            EXPECT_EQ(mine[i].id, theirs[i].id);
            EXPECT_EQ(mine[i].name, theirs[i].name);
            EXPECT_EQ(mine[i].note, theirs[i].note);
        }
        EXPECT_EQ(mine[1].note, std::string("x\0y", 3));
        EXPECT_EQ(ours.rows_affected(), 2u);
        EXPECT_EQ(ours.command_status(), "SELECT 2");
        // The same failures, naming the same column.
        try {
            (void)ours.as<int>();
            ADD_FAILURE() << "three columns read as one";
        } catch (const pgco::error& e) {
            EXPECT_NE(std::string(e.what()).find("(id, name, note)"), std::string::npos)
                << e.what();
        }
        try {
            (void)ours.get<std::string>(0, 2);
            ADD_FAILURE() << "NULL read as a string";
        } catch (const pgco::error& e) {
            EXPECT_EQ(e.code(), pgco::errc::unexpected_null);
            EXPECT_NE(std::string(e.what()).find("column 3 ('note')"), std::string::npos)
                << e.what();
        }
    }
}

TEST(wire, a_result_read_off_the_wire_keeps_its_columns_when_the_statement_is_gone)
{
    auto shape = std::make_shared<pgco::detail::wire_shape>();
    shape->names = {"n"};
    shape->types = {23};
    std::vector<pgco::detail::wire_rows::cell> cells = {{0, 1}};
    pgco::result r(pgco::detail::wire_rows::make(shape, false, 1, cells, "5\0"s, "SELECT 1"));
    shape.reset(); // the cache entry evicted, the connection closed
    EXPECT_EQ(r.column_name(0), "n");
    EXPECT_EQ(r.get<int>(0, 0), 5);
}
