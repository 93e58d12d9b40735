#include "support/server.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
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

namespace {
// The sandbox URL has the shape postgresql://user:password@host:port/db.
std::pair<std::size_t, std::size_t> password_span(const std::string& url)
{
    auto scheme_end = url.find("://");
    auto at = url.find('@');
    auto colon = url.find(':', scheme_end + 3);
    if (scheme_end == std::string::npos || at == std::string::npos || colon > at)
        throw std::runtime_error("the test URL has no password");
    return {colon + 1, at};
}
} // namespace

std::string database_password()
{
    auto url = database_url();
    auto [from, to] = password_span(url);
    return url.substr(from, to - from);
}

std::string url_with_password(const std::string& password)
{
    auto url = database_url();
    auto [from, to] = password_span(url);
    return url.substr(0, from) + password + url.substr(to);
}

} // namespace pgco::test
