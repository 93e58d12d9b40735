#include "support/database_url.hpp"

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace pgco::test {

std::string database_url()
{
    if (const char* url = std::getenv("PGCO_TEST_DATABASE_URL"); url && *url)
        return url;
    const char* state = std::getenv("PGCO_SANDBOX_STATE");
    if (!state || !*state)
        throw std::runtime_error("no test server: set PGCO_TEST_DATABASE_URL or run through "
                                 "ctest, whose fixture starts scripts/pg-sandbox");
    std::ifstream in(std::string(state) + "/url");
    std::string url;
    if (!std::getline(in, url) || url.empty())
        throw std::runtime_error(std::string("no sandbox URL in ") + state +
                                 "/url: did the pg_sandbox_start fixture run?");
    return url;
}

} // namespace pgco::test
