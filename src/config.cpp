#include <pgco/config.hpp>
#include <pgco/error.hpp>

#include <boost/url/parse_query.hpp>
#include <boost/url/pct_string_view.hpp>
#include <libpq-fe.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pgco {
namespace {

using namespace std::string_view_literals;
constexpr auto npos = std::string_view::npos;

constexpr std::string_view mask = "***";
constexpr std::uint64_t max_connection_limit = 100000;
constexpr std::uint64_t max_timeout_seconds = 24 * 60 * 60;

// libpq knows connect_timeout too, but ignores it for non-blocking connects; pgco enforces it
// itself, so libpq must not see a value that would only look like it applies.
constexpr std::array pgco_keys{
    "connection_limit"sv,     "pool_timeout"sv,   "connect_timeout"sv,
    "max_waiters"sv,          "min_idle"sv,       "health_check_interval"sv,
    "health_check_timeout"sv, "max_lifetime"sv,   "idle_timeout"sv,
    "retry_attempts"sv,       "query_timeout"sv,  "retry_backoff"sv,
    "retry_jitter"sv,         "retry_deadline"sv, "retry_all"sv,
    "statement_cache_size"sv, "pgbouncer"sv,      "multiplex"sv,
    "pipeline_depth"sv,       "max_connecting"sv};

// The duration parameters and where they go.
std::chrono::milliseconds* duration_field(pool_options& o, std::string_view key)
{
    if (key == "pool_timeout")
        return &o.pool_timeout;
    if (key == "connect_timeout")
        return &o.connect_timeout;
    if (key == "health_check_interval")
        return &o.health_check_interval;
    if (key == "health_check_timeout")
        return &o.health_check_timeout;
    if (key == "max_lifetime")
        return &o.max_lifetime;
    if (key == "idle_timeout")
        return &o.idle_timeout;
    if (key == "retry_deadline")
        return &o.retry.deadline;
    if (key == "query_timeout")
        return &o.query_timeout;
    return nullptr;
}

bool is_pgco_key(std::string_view key)
{
    return std::ranges::find(pgco_keys, key) != pgco_keys.end();
}

// The options libpq shows as "*" (PQconninfoOption::dispchar).
bool is_secret_key(std::string_view key)
{
    return key == "password" || key == "sslpassword";
}

// libpq splits key=value strings on isspace in the C locale.
bool is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// A DATABASE_URL read from a file or a shell often carries a trailing newline.
std::string_view trim(std::string_view s)
{
    while (!s.empty() && is_space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
        s.remove_suffix(1);
    return s;
}

std::string_view view(boost::urls::pct_string_view s)
{
    return {s.data(), s.size()};
}

// The scheme of "scheme://...", or empty if s does not start like a URI.
std::string_view scheme_of(std::string_view s)
{
    auto end = s.find("://");
    if (end == 0 || end == npos || !is_alpha(s[0]))
        return {};
    auto scheme = s.substr(0, end);
    bool valid = std::ranges::all_of(scheme, [](char c) {
        return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
    });
    return valid ? scheme : std::string_view{};
}

// libpq compares the prefix case-sensitively, so "POSTGRES://" is no URI to it.
bool is_postgres_scheme(std::string_view scheme)
{
    return scheme == "postgresql" || scheme == "postgres";
}

// Where libpq (conninfo_uri_parse_options) finds the parts of a URI; npos when absent.
// Finding them exactly as libpq does is what tells us which text is the password.
struct uri_layout
{
    std::size_t password = npos; // "secret" in user:secret@, up to password_end
    std::size_t password_end = npos;
    std::size_t hosts = 0;    // just after the user info
    std::size_t query = npos; // the '?'
};

uri_layout layout_of(std::string_view uri)
{
    uri_layout layout;
    layout.hosts = uri.find("://") + 3;
    // The user info ends at an '@' that comes before any '/'; '?' does not end it.
    auto at = uri.find_first_of("@/", layout.hosts);
    if (at != npos && uri[at] == '@') {
        auto colon = uri.find(':', layout.hosts);
        if (colon < at) {
            layout.password = colon + 1;
            layout.password_end = at;
        }
        layout.hosts = at + 1;
    }
    layout.query = uri.find('?', layout.hosts);
    return layout;
}

std::string quote(std::string_view value)
{
    std::string out = "'";
    for (char c : value) {
        if (c == '\\' || c == '\'')
            out += '\\';
        out += c;
    }
    return out += '\'';
}

void append_pair(std::string& out, std::string_view key, std::string_view value)
{
    if (!out.empty())
        out += ' ';
    out.append(key).append("=").append(quote(value));
}

struct options_deleter
{
    void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using libpq_options = std::unique_ptr<PQconninfoOption, options_deleter>;

// libpq knows its own keywords and URI syntax best, so it has the last word on validity.
libpq_options parse_with_libpq(const std::string& conninfo, std::string& message)
{
    char* error = nullptr;
    libpq_options options(PQconninfoParse(conninfo.c_str(), &error));
    if (error) {
        message = trim(error);
        PQfreemem(error);
    } else if (!options) {
        message = "out of memory";
    }
    return options;
}

std::optional<std::uint64_t> parse_unsigned(std::string_view digits)
{
    std::uint64_t value = 0;
    if (digits.empty() || !std::ranges::all_of(digits, is_digit))
        return {};
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc{} || end != digits.data() + digits.size())
        return {};
    return value;
}

std::optional<std::size_t> parse_limit(std::string_view text)
{
    auto value = parse_unsigned(text);
    if (!value || *value < 1 || *value > max_connection_limit)
        return {};
    return static_cast<std::size_t>(*value);
}

// Decimal seconds, parsed by hand: from_chars would take "1e3", "inf" and "-0".
std::optional<std::chrono::milliseconds> parse_seconds(std::string_view text)
{
    auto dot = std::min(text.find('.'), text.size());
    auto whole = text.substr(0, dot);
    auto fraction = text.substr(std::min(dot + 1, text.size()));
    if (whole.empty() && fraction.empty())
        return {};
    auto seconds = whole.empty() ? std::optional<std::uint64_t>(0) : parse_unsigned(whole);
    if (!seconds || !std::ranges::all_of(fraction, is_digit))
        return {};
    bool fraction_zero = fraction.find_first_not_of('0') == npos;
    if (*seconds > max_timeout_seconds || (*seconds == max_timeout_seconds && !fraction_zero))
        return {};
    auto digit = [&](std::size_t i) -> std::uint64_t {
        return i < fraction.size() ? fraction[i] - '0' : 0;
    };
    auto ms = *seconds * 1000 + digit(0) * 100 + digit(1) * 10 + digit(2) + (digit(3) >= 5);
    // 0 means "no limit", so a tiny positive timeout must not round down to it.
    if (ms == 0 && !fraction_zero)
        ms = 1;
    return std::chrono::milliseconds(ms);
}

// Splits a connection string into the part for libpq and pgco's own parameters, and remembers
// the passwords it saw so that no error message can show them.
class splitter
{
public:
    explicit splitter(std::string prefix = {}) : prefix_(std::move(prefix)) {}

    std::string libpq;
    std::vector<std::pair<std::string, std::string>> own; // decoded, in the order given

    void split(std::string_view text)
    {
        if (text.find('\0') != npos)
            fail("the connection string contains a NUL character");
        auto scheme = scheme_of(text);
        if (scheme.empty())
            split_keywords(text);
        else if (is_postgres_scheme(scheme))
            split_uri(text);
        else
            fail("unsupported URI scheme '" + std::string(scheme) +
                 "' (expected postgresql:// or postgres://)");
    }

    // Our own messages quote only keys, the scheme and pgco's values, never a password.
    [[noreturn]] void fail(const std::string& message) const
    {
        throw error(errc::invalid_configuration, prefix_ + message);
    }

    // For libpq's messages, which may quote any part of the string. All of the message, not
    // only the quoted parts: libpq does not escape quotes inside them.
    std::string scrub(std::string message) const
    {
        // Longest first, so that a password containing another leaves no tail behind.
        auto secrets = secrets_;
        std::ranges::sort(secrets, [](auto& a, auto& b) { return a.size() > b.size(); });
        for (const auto& secret : secrets)
            for (auto at = message.find(secret); at != npos;
                 at = message.find(secret, at + mask.size()))
                message.replace(at, secret.size(), mask);
        return message;
    }

private:
    std::string prefix_;
    std::vector<std::string> secrets_; // as written and decoded

    void add_secret(std::string_view secret)
    {
        if (!secret.empty())
            secrets_.emplace_back(secret);
    }

    void split_uri(std::string_view uri)
    {
        auto layout = layout_of(uri);
        if (layout.password != npos) {
            auto raw = uri.substr(layout.password, layout.password_end - layout.password);
            add_secret(raw);
            if (auto encoded = boost::urls::make_pct_string_view(raw))
                add_secret(encoded->decode());
        }
        // libpq stops the user info at the first '@' or '/', so an unencoded '@' or '/' in the
        // password makes it split the URI elsewhere and use part of the password as a host,
        // port or database name, which then appear in messages and logs.
        if (uri.find('@', layout.hosts) < layout.query)
            fail("unexpected '@' after the user info in the URI; percent-encode '@' as %40 and "
                 "'/' as %2F in the user name and password");
        if (layout.query == npos) {
            libpq = uri;
            return;
        }
        // Only the query goes through Boost.URL: libpq's multi-host lists are no RFC 3986 URI.
        auto query = uri.substr(layout.query + 1);
        auto params = boost::urls::parse_query(query);
        if (!params)
            fail_query(query);
        std::string kept;
        for (auto param : *params) {
            auto key = param.key.decode();
            if (is_secret_key(key)) {
                add_secret(view(param.value));
                add_secret(param.value.decode());
            }
            if (is_pgco_key(key)) {
                own.emplace_back(std::move(key), param.value.decode());
            } else if (!param.key.empty() || param.has_value) { // "&&" carries nothing
                kept.append(kept.empty() ? "" : "&").append(view(param.key));
                if (param.has_value)
                    kept.append("=").append(view(param.value));
            }
        }
        libpq = std::string(uri.substr(0, layout.query)) + (kept.empty() ? "" : "?" + kept);
    }

    // Boost.URL says only that the query is malformed; the user needs to know where.
    [[noreturn]] void fail_query(std::string_view query) const
    {
        for (std::size_t begin = 0; begin <= query.size();) {
            auto end = std::min(query.find('&', begin), query.size());
            auto param = query.substr(begin, end - begin);
            auto equals = param.find('=');
            if (!boost::urls::parse_query(param) && equals != npos)
                fail("malformed percent-encoding, or a character that must be percent-encoded, "
                     "in URI query parameter '" +
                     std::string(param.substr(0, equals)) + "'");
            begin = end + 1;
        }
        fail("malformed percent-encoding, or a character that must be percent-encoded, in the "
             "URI query");
    }

    // libpq's grammar (conninfo_parse): key [ws] = [ws] value, the value either 'quoted' or
    // running to the next whitespace; a backslash escapes the next character in both forms.
    void split_keywords(std::string_view text)
    {
        std::size_t i = 0;
        auto skip_space = [&] {
            while (i < text.size() && is_space(text[i]))
                ++i;
        };
        for (skip_space(); i < text.size(); skip_space()) {
            auto key_begin = i;
            while (i < text.size() && text[i] != '=' && !is_space(text[i]))
                ++i;
            std::string key(text.substr(key_begin, i - key_begin)), value;
            skip_space();
            // Not quoting the word: it may be the tail of an unquoted password with a space.
            if (i == text.size() || text[i] != '=')
                fail("missing '=' after the keyword at position " + std::to_string(key_begin + 1) +
                     " of the connection string");
            ++i;
            skip_space();
            bool quoted = i < text.size() && text[i] == '\'';
            i += quoted;
            for (;;) {
                if (i == text.size()) {
                    if (quoted)
                        fail("unterminated quoted string in the connection string");
                    break;
                }
                char c = text[i++];
                if (c == '\\') {
                    if (i < text.size())
                        value += text[i++];
                } else if (quoted ? c == '\'' : is_space(c)) {
                    break;
                } else {
                    value += c;
                }
            }
            if (is_secret_key(key))
                add_secret(value);
            if (is_pgco_key(key))
                own.emplace_back(std::move(key), std::move(value));
            else
                append_pair(libpq, key, value);
        }
    }
};

pool_options parse(std::string_view text, std::string prefix)
{
    splitter parts(std::move(prefix));
    parts.split(trim(text));

    pool_options options;
    std::array<bool, pgco_keys.size()> seen{};
    for (const auto& [key, value] : parts.own) {
        auto index = std::ranges::find(pgco_keys, key) - pgco_keys.begin();
        if (std::exchange(seen[index], true))
            parts.fail("connection parameter '" + key + "' is given more than once");
        auto invalid = [&](std::string_view expected) {
            parts.fail("invalid value for connection parameter '" + key + "': '" + value +
                       "' (expected " + std::string(expected) + ")");
        };
        if (key == "connection_limit") {
            auto limit = parse_limit(value);
            if (!limit)
                invalid("a whole number from 1 to 100000");
            options.connection_limit = *limit;
        } else if (key == "max_waiters" || key == "min_idle") {
            auto count = parse_unsigned(value);
            if (!count || *count > max_connection_limit)
                invalid("a whole number from 0 to 100000");
            (key == "max_waiters" ? options.max_waiters : options.min_idle) =
                static_cast<std::size_t>(*count);
        } else if (key == "retry_attempts") {
            auto count = parse_unsigned(value);
            if (!count || *count > 100)
                invalid("a whole number from 0 to 100");
            options.retry.attempts = static_cast<unsigned>(*count);
        } else if (key == "retry_backoff") {
            std::vector<std::chrono::milliseconds> pauses;
            std::string_view rest = value;
            for (;;) {
                auto comma = std::min(rest.find(','), rest.size());
                auto pause = parse_seconds(rest.substr(0, comma));
                if (!pause)
                    invalid("a comma-separated list of seconds, such as 0,2,4");
                pauses.push_back(*pause);
                if (comma == rest.size())
                    break;
                rest.remove_prefix(comma + 1);
            }
            options.retry.backoff = std::move(pauses);
        } else if (key == "retry_jitter") {
            auto share = parse_seconds(value); // the same decimal syntax, read as a fraction
            if (!share || *share > std::chrono::seconds(1))
                invalid("a fraction from 0 to 1, such as 0.1");
            options.retry.jitter = static_cast<double>(share->count()) / 1000.0;
        } else if (key == "retry_all" || key == "pgbouncer" || key == "multiplex") {
            if (value != "true" && value != "false" && value != "1" && value != "0")
                invalid("true or false");
            bool on = value == "true" || value == "1";
            (key == "retry_all"   ? options.retry.retry_all
             : key == "pgbouncer" ? options.pgbouncer
                                  : options.multiplex) = on;
        } else if (key == "statement_cache_size") {
            auto count = parse_unsigned(value);
            if (!count || *count > 100000)
                invalid("a whole number from 0 to 100000; 0 turns the cache off");
            options.statement_cache_size = static_cast<std::size_t>(*count);
        } else if (key == "max_connecting") {
            auto limit = parse_limit(value);
            if (!limit)
                invalid("a whole number from 1 to 100000");
            options.max_connecting = *limit;
        } else if (key == "pipeline_depth") {
            auto count = parse_unsigned(value);
            if (!count || *count < 1 || *count > 100000)
                invalid("a whole number from 1 to 100000");
            options.pipeline_depth = static_cast<std::size_t>(*count);
        } else {
            auto timeout = parse_seconds(value);
            if (!timeout)
                invalid("seconds from 0 to 86400, such as 20 or 0.5; 0 means no limit");
            *duration_field(options, key) = *timeout;
        }
    }
    std::string message;
    if (!parse_with_libpq(parts.libpq, message))
        parts.fail("invalid connection string: " + parts.scrub(message));
    options.conninfo = std::move(parts.libpq);
    return options;
}

std::string redact_uri(std::string_view uri)
{
    auto layout = layout_of(uri);
    std::string out(uri.substr(0, layout.query));
    if (layout.password < layout.password_end)
        out.replace(layout.password, layout.password_end - layout.password, mask);
    if (layout.query == npos)
        return out;
    out += '?';
    // Already parsed once by the splitter; unlike it, keep every parameter as written.
    bool first = true;
    for (auto param : *boost::urls::parse_query(uri.substr(layout.query + 1))) {
        out.append(std::exchange(first, false) ? "" : "&").append(view(param.key));
        if (param.has_value)
            out.append("=").append(is_secret_key(param.key.decode()) ? mask : view(param.value));
    }
    return out;
}

} // namespace

pool_options pool_options::from_url(std::string_view url)
{
    return parse(url, {});
}

pool_options pool_options::from_env(const char* name)
{
    if (!name)
        throw error(errc::invalid_configuration, "no environment variable name given");
    const char* value = std::getenv(name);
    if (!value)
        throw error(errc::invalid_configuration,
                    "environment variable '" + std::string(name) + "' is not set");
    return parse(value, "environment variable '" + std::string(name) + "': ");
}

std::string pool_options::redacted() const
{
    return redact_conninfo(conninfo);
}

std::string redact_conninfo(std::string_view conninfo)
{
    auto text = trim(conninfo);
    auto scheme = scheme_of(text);
    auto unparsable = scheme.empty() ? std::string("<unparsable connection string>")
                                     : std::string(scheme) + "://***";
    try {
        splitter parts;
        parts.split(text);
        // A misspelt keyword such as "pasword" would be shown as is; rather show nothing.
        std::string message;
        auto options = parse_with_libpq(parts.libpq, message);
        if (!options)
            return unparsable;
        if (!scheme.empty())
            return redact_uri(text);
        std::string out;
        for (auto* option = options.get(); option->keyword; ++option) {
            if (!option->val)
                continue;
            bool secret = is_secret_key(option->keyword) || option->dispchar[0] == '*';
            append_pair(out, option->keyword, secret ? mask : std::string_view(option->val));
        }
        for (const auto& [key, value] : parts.own)
            append_pair(out, key, value);
        return out;
    } catch (const std::exception&) {
        return unparsable;
    }
}

} // namespace pgco
