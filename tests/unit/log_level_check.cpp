// Checks the level pgco's default logger takes from the environment CTest sets for it:
//   log_level_check EXPECTED_LEVEL
// A program of its own because the logger reads the environment once per process.

#include <pgco/log.hpp>

#include <spdlog/spdlog.h>

#include <cstdio>
#include <string_view>

int main(int argc, char** argv)
{
    if (argc != 2) {
        std::fprintf(stderr, "usage: log_level_check EXPECTED_LEVEL\n");
        return 2;
    }
    auto level = spdlog::level::to_string_view(pgco::logger()->level());
    std::string_view actual(level.data(), level.size());
    if (actual != argv[1]) {
        std::fprintf(stderr, "expected level %s, got %.*s\n", argv[1],
                     static_cast<int>(actual.size()), actual.data());
        return 1;
    }
    std::printf("level %s as expected\n", argv[1]);
    return 0;
}
