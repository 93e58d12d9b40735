#include "support/server.hpp"

#include <stdexcept>

namespace pgco::test {

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
