#include <pgco/log.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <string_view>

namespace pgco {
namespace {

bool is_production()
{
    for (const char* var : {"PGCO_ENV", "APP_ENV", "NODE_ENV"}) {
        if (const char* v = std::getenv(var); v && std::string_view(v) == "production")
            return true;
    }
    return false;
}

spdlog::level::level_enum level_from_environment()
{
    if (const char* v = std::getenv("PGCO_LOG_LEVEL"); v && *v) {
        auto level = spdlog::level::from_str(v);
        // from_str maps unknown names to `off`; only accept `off` when asked for by name.
        if (level != spdlog::level::off || std::string_view(v) == "off")
            return level;
    }
    return is_production() ? spdlog::level::err : spdlog::level::debug;
}

std::shared_ptr<spdlog::logger> make_default()
{
    // Not registered globally: an application's spdlog::drop_all() must not take ours away,
    // and an application logger that is also named "pgco" must not clash with it.
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto l = std::make_shared<spdlog::logger>("pgco", std::move(sink));
    l->set_level(level_from_environment());
    return l;
}

std::shared_ptr<spdlog::logger>& default_logger()
{
    static std::shared_ptr<spdlog::logger> instance = make_default();
    return instance;
}

std::shared_ptr<spdlog::logger> user_logger; // accessed through std::atomic_* only

} // namespace

std::shared_ptr<spdlog::logger> logger()
{
    if (auto l = std::atomic_load(&user_logger))
        return l;
    return default_logger();
}

void set_logger(std::shared_ptr<spdlog::logger> l)
{
    std::atomic_store(&user_logger, std::move(l));
}

} // namespace pgco
