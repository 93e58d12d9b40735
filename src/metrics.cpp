#include <pgco/metrics.hpp>
#include <pgco/pool.hpp>

#include <chrono>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>

namespace pgco {
namespace {

bool is_name_start(char c) noexcept
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool is_name_char(char c) noexcept
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

// Metric names may contain ':' too (reserved for recording rules, but valid).
bool valid_metric_name(std::string_view name) noexcept
{
    if (name.empty() || !(is_name_start(name[0]) || name[0] == ':'))
        return false;
    for (char c : name)
        if (!is_name_char(c) && c != ':')
            return false;
    return true;
}

// Names starting with "__" are reserved for Prometheus itself.
bool valid_label_name(std::string_view name) noexcept
{
    if (name.empty() || !is_name_start(name[0]) || name.starts_with("__"))
        return false;
    for (char c : name)
        if (!is_name_char(c))
            return false;
    return true;
}

[[noreturn]] void bad_labels(std::string_view why)
{
    throw std::invalid_argument("pgco::to_prometheus: invalid labels: " + std::string(why));
}

// Checks a caller's label list against the exposition grammar, so that a typo cannot make the
// whole scrape unparsable (Prometheus rejects every sample of a page with one bad line).
void check_labels(std::string_view labels)
{
    std::set<std::string_view> seen;
    std::size_t i = 0;
    while (i < labels.size()) {
        std::size_t eq = labels.find('=', i);
        if (eq == std::string_view::npos)
            bad_labels("expected name=\"value\"");
        std::string_view name = labels.substr(i, eq - i);
        if (!valid_label_name(name))
            bad_labels("bad label name '" + std::string(name) + "'");
        if (name == "quantile")
            bad_labels("'quantile' is set by to_prometheus");
        if (!seen.insert(name).second)
            bad_labels("duplicate label '" + std::string(name) + "'");
        i = eq + 1;
        if (i >= labels.size() || labels[i] != '"')
            bad_labels("label value of '" + std::string(name) + "' is not quoted");
        ++i;
        bool closed = false;
        while (i < labels.size()) {
            char c = labels[i];
            if (c == '\\') {
                if (i + 1 >= labels.size() ||
                    (labels[i + 1] != '\\' && labels[i + 1] != '"' && labels[i + 1] != 'n'))
                    bad_labels("bad escape in the value of '" + std::string(name) + "'");
                i += 2;
                continue;
            }
            if (c == '\n')
                bad_labels("line feed in the value of '" + std::string(name) + "'");
            ++i;
            if (c == '"') {
                closed = true;
                break;
            }
        }
        if (!closed)
            bad_labels("unterminated value of '" + std::string(name) + "'");
        if (i == labels.size())
            return;
        if (labels[i] != ',' || i + 1 == labels.size())
            bad_labels("expected ',' between labels");
        ++i;
    }
}

// Seconds from microseconds, written exactly (no binary floating point): "0.0025", "12", "0".
std::string seconds(std::chrono::microseconds us)
{
    long long v = us.count();
    std::string out;
    if (v < 0) {
        out.push_back('-'); // not `out = "-"`: GCC 12 warns falsely (-Wstringop-overflow) there
        v = -v;
    }
    out += std::to_string(v / 1000000);
    long long frac = v % 1000000;
    if (frac != 0) {
        std::string digits = std::to_string(frac);
        digits.insert(0, 6 - digits.size(), '0');
        digits.erase(digits.find_last_not_of('0') + 1);
        out += '.';
        out += digits;
    }
    return out;
}

class writer
{
public:
    writer(std::string_view prefix, std::string_view labels) : prefix_(prefix), labels_(labels) {}

    void metric(std::string_view name, std::string_view type, std::string_view help)
    {
        out_ += "# HELP ";
        append_name(name);
        out_ += ' ';
        out_ += help; // constant texts below: nothing to escape
        out_ += "\n# TYPE ";
        append_name(name);
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }

    void sample(std::string_view name, std::string_view value, std::string_view extra_label = {})
    {
        append_name(name);
        if (!labels_.empty() || !extra_label.empty()) {
            out_ += '{';
            out_ += labels_;
            if (!labels_.empty() && !extra_label.empty())
                out_ += ',';
            out_ += extra_label;
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }

    void gauge(std::string_view name, std::uint64_t value, std::string_view help)
    {
        metric(name, "gauge", help);
        sample(name, std::to_string(value));
    }

    void counter(std::string_view name, std::uint64_t value, std::string_view help)
    {
        metric(name, "counter", help);
        sample(name, std::to_string(value));
    }

    std::string take() { return std::move(out_); }

private:
    void append_name(std::string_view name)
    {
        out_ += prefix_;
        out_ += '_';
        out_ += name;
    }

    std::string_view prefix_;
    std::string_view labels_;
    std::string out_;
};

} // namespace

std::string to_prometheus(const pool_stats& s, std::string_view prefix, std::string_view labels)
{
    if (!valid_metric_name(prefix))
        throw std::invalid_argument("pgco::to_prometheus: invalid metric name prefix '" +
                                    std::string(prefix) + "'");
    check_labels(labels);

    writer w(prefix, labels);
    w.gauge("connections_open", s.open, "Connections open: idle, in use or being checked.");
    w.gauge("connections_idle", s.idle, "Open connections waiting in the pool.");
    w.gauge("connections_in_use", s.in_use, "Connections handed out to callers.");
    w.gauge("connections_connecting", s.connecting, "Connections being opened now.");
    w.gauge("acquire_waiting", s.waiting, "Callers waiting for a pooled connection.");

    w.counter("acquires_total", s.acquired, "Successful acquires of a pooled connection.");
    w.counter("acquire_timeouts_total", s.acquire_timeouts,
              "Acquires that ran out of pool_timeout (P2024).");
    w.counter("connections_opened_total", s.connections_opened, "Successful connects.");
    w.counter("connections_closed_total", s.connections_closed,
              "Connections closed for any reason.");
    w.counter("connect_failures_total", s.connect_failures, "Connects that failed.");
    w.counter("connections_closed_by_server_total", s.closed_by_server,
              "Idle connections found closed by the server.");
    w.counter("health_check_failures_total", s.health_check_failures,
              "Health check pings that failed or timed out.");
    w.counter("reconnects_total", s.reconnects, "Pool reconnect() calls carried out.");
    w.counter("query_retries_total", s.query_retries, "Queries repeated by the retry layer.");
    w.counter("statements_multiplexed_total", s.statements_multiplexed,
              "Statements sent in shared pipelined batches.");
    w.counter("pipeline_batches_total", s.pipeline_batches,
              "Pipelined batches of shared statements (one round trip each).");

    // A gauge with a quantile label rather than a summary: the pool keeps percentiles of
    // recent acquires only, with no _sum and _count to go with them.
    w.metric("acquire_wait_seconds", "gauge",
             "Time waited for a pooled connection over recent acquires, by quantile.");
    w.sample("acquire_wait_seconds", seconds(s.acquire_wait_p50), "quantile=\"0.5\"");
    w.sample("acquire_wait_seconds", seconds(s.acquire_wait_p99), "quantile=\"0.99\"");
    return w.take();
}

std::string
prometheus_labels(std::initializer_list<std::pair<std::string_view, std::string_view>> labels)
{
    std::string out;
    for (const auto& [name, value] : labels) {
        if (!valid_label_name(name))
            throw std::invalid_argument("pgco::prometheus_labels: invalid label name '" +
                                        std::string(name) + "'");
        if (!out.empty())
            out += ',';
        out += name;
        out += "=\"";
        for (char c : value) {
            if (c == '\\')
                out += "\\\\";
            else if (c == '"')
                out += "\\\"";
            else if (c == '\n')
                out += "\\n";
            else
                out += c;
        }
        out += '"';
    }
    return out;
}

} // namespace pgco
