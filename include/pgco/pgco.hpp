#pragma once

/// Everything pgco offers, in one include.

#include <pgco/batch.hpp>
#include <pgco/config.hpp>
#include <pgco/connection.hpp>
#include <pgco/error.hpp>
#include <pgco/listener.hpp>
#include <pgco/log.hpp>
#include <pgco/metrics.hpp>
#include <pgco/pool.hpp>
#include <pgco/result.hpp>
#include <pgco/retry.hpp>
#include <pgco/types.hpp>
