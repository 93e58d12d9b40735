#pragma once

// The test server's URL, without Asio or pgco: test programs that drive a pgco binary from the
// outside (tests/integration/test_http_example.cpp) use it too.

#include <string>

namespace pgco::test {

/// The URL of the test server: $PGCO_TEST_DATABASE_URL, else the URL the ctest fixture's
/// sandbox wrote to $PGCO_SANDBOX_STATE/url. Throws (the test fails, never skips) when there
/// is none.
std::string database_url();

} // namespace pgco::test
