#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace pgco {

// Declared in pool.hpp; a forward declaration keeps this header free of Asio.
struct pool_stats;

/// Renders every field of `s` in the Prometheus text exposition format 0.0.4, ready to serve
/// with `Content-Type: text/plain; version=0.0.4; charset=utf-8`.
///
/// Metric names start with `prefix` (e.g. `pgco_connections_open`); gauges for the pool's
/// current state, counters named `*_total` for the counters, and the acquire wait percentiles
/// as the gauge `<prefix>_acquire_wait_seconds{quantile="0.5"|"0.99"}`. Every metric has a
/// `# HELP` and a `# TYPE` line.
///
/// `labels` is added to every sample: label pairs in Prometheus syntax without the braces,
/// e.g. `pool="main",region="eu"` (build it with `prometheus_labels` to get the escaping
/// right). Throws `std::invalid_argument` if `prefix` is not a valid metric name or `labels`
/// is not a valid label list (or uses `quantile`, which this function sets itself), so the
/// output is always well-formed.
std::string to_prometheus(const pool_stats& s, std::string_view prefix = "pgco",
                          std::string_view labels = {});

/// Renders label pairs for `to_prometheus`: `name="value"` joined by commas, with backslash,
/// double quote and line feed in values escaped as the format requires. Throws
/// `std::invalid_argument` for a name that is not a valid label name.
std::string
prometheus_labels(std::initializer_list<std::pair<std::string_view, std::string_view>> labels);

} // namespace pgco
