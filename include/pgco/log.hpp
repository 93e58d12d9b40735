#pragma once

#include <memory>

namespace spdlog {
class logger;
}

namespace pgco {

/// The logger pgco writes to: by default an spdlog logger named `pgco` on standard error.
///
/// Its level comes from the environment the first time it is used: `PGCO_LOG_LEVEL`
/// (`trace`, `debug`, `info`, `warn`, `error`, `critical`, `off`) wins; otherwise
/// `PGCO_ENV=production` (or `APP_ENV`/`NODE_ENV` set to `production`) means `error`, and
/// anything else means `debug`, verbose as in development. Passwords never reach it.
std::shared_ptr<spdlog::logger> logger();

/// Makes pgco log through `l` (for example one with the application's own sinks). Passing
/// null restores the default logger. Safe to call from any thread.
void set_logger(std::shared_ptr<spdlog::logger> l);

} // namespace pgco
