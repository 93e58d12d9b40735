// Which statements may be prepared and share a pipeline (src/statement_kind.hpp).
#include "statement_kind.hpp"

#include <gtest/gtest.h>

using pgco::detail::shareable_statement;

TEST(shareable_statement, plain_reads_and_writes_are_shareable)
{
    for (const char* sql :
         {"SELECT 1", "select $1::int", "INSERT INTO t VALUES ($1)", "update t set x = 1",
          "DELETE FROM t", "WITH a AS (SELECT 1) SELECT * FROM a", "VALUES (1)", "TABLE t",
          "(SELECT 1) UNION (SELECT 2)", "SeLeCt 1", "SELECT", "SELECT*FROM t", "select\t1 + 1",
          "VALUES(1), (2)", "insert/* c */INTO t VALUES (1)", "DELETE--c\nFROM t"})
        EXPECT_TRUE(shareable_statement(sql)) << sql;
}

TEST(shareable_statement, everything_else_runs_alone)
{
    for (const char* sql : {"BEGIN", "COMMIT", "SET search_path = x", "VACUUM", "LISTEN c",
                            "DISCARD ALL", "PREPARE p AS SELECT 1", "EXPLAIN SELECT 1", "SELECTX 1",
                            "SELEC 1", "", "   ", "(", "1", "ÉSELECT", "SELECT_1"})
        EXPECT_FALSE(shareable_statement(sql)) << sql;
}

TEST(shareable_statement, looks_past_blanks_and_comments)
{
    EXPECT_TRUE(shareable_statement(" \t\r\n\f\v SELECT 1"));
    EXPECT_TRUE(shareable_statement("-- note\nSELECT 1"));
    EXPECT_TRUE(shareable_statement("/* note */ SELECT 1"));
    EXPECT_TRUE(shareable_statement("/**/SELECT 1"));
    EXPECT_FALSE(shareable_statement("-- SELECT 1"));        // all comment
    EXPECT_FALSE(shareable_statement("/* SELECT 1"));        // unterminated
    EXPECT_FALSE(shareable_statement("-- SELECT\nBEGIN"));   // the comment's word does not count
    EXPECT_FALSE(shareable_statement("/* SELECT */ BEGIN")); // nor this one's
}

TEST(shareable_statement, block_comments_nest_as_in_postgresql)
{
    // PostgreSQL ends the comment at the second "*/": the statement is the BEGIN after it.
    EXPECT_FALSE(shareable_statement("/* a /* b */ SELECT */ BEGIN"));
    EXPECT_TRUE(shareable_statement("/* a /* b */ BEGIN */ SELECT 1"));
    EXPECT_FALSE(shareable_statement("/* a /* b */ SELECT 1")); // still inside the comment
}
