#pragma once

// The state behind pgco::connection, shared with the pool (which watches idle connections).
// Internal: not installed, includes libpq.

#include "early_read.hpp"
#include "edge_wait.hpp"
#include "statement_kind.hpp"
#include "wire_rows.hpp"

#include <pgco/connection.hpp>

#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>

#include <libpq-fe.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pgco::detail {

/// A statement text the server knows as a named prepared statement on one connection.
struct cached_statement
{
    std::string key;  // SQL, a NUL, then the parameter type OIDs' bytes (see statement_key)
    std::string name; // "pgco_<n>", unique per connection
    // The result columns as Describe reported them (set with `described`), shared with the
    // results read off the wire for it (see wire_rows.hpp).
    std::shared_ptr<const wire_shape> shape{};
    bool described = false;
    bool prepared = false; // the server confirmed the Parse
};

/// Per-connection LRU of prepared statements, keyed by SQL text and parameter types (the same
/// text with other parameter types is another statement on the server).
class statement_cache
{
public:
    using iterator = std::list<cached_statement>::iterator;

    std::size_t capacity = 0;

    statement_cache() = default;
    // `recent_` points into this object's list.
    statement_cache(const statement_cache&) = delete;
    statement_cache& operator=(const statement_cache&) = delete;

    iterator find(std::string_view key)
    {
        if (recent_ != lru_.end() && recent_->key == key)
            return touch(recent_);
        auto it = index_.find(key);
        if (it == index_.end())
            return lru_.end();
        return touch(it->second);
    }
    /// The entry for `sql` with `params`' types if it is the one found or added last, else
    /// end() (which says nothing: build the key and `find` it). A statement run again and
    /// again, the usual case, is then found without building its key or hashing it.
    iterator find_recent(std::string_view sql, const params_view& params)
    {
        if (recent_ == lru_.end())
            return recent_;
        const std::string& k = recent_->key;
        auto types = static_cast<std::size_t>(params.count) * sizeof(oid);
        if (k.size() != sql.size() + 1 + types || k.compare(0, sql.size(), sql) != 0 ||
            k[sql.size()] != '\0' ||
            (types > 0 && std::memcmp(k.data() + sql.size() + 1, params.types, types) != 0))
            return lru_.end();
        return touch(recent_);
    }
    iterator end() noexcept { return lru_.end(); }

    /// Adds an entry (not yet prepared). The least recently used entry beyond capacity is
    /// dropped; its name goes to `evicted` so the caller can DEALLOCATE it on the server.
    iterator add(std::string key)
    {
        if (lru_.size() >= capacity && !lru_.empty()) {
            auto& victim = lru_.back();
            if (victim.prepared)
                evicted.push_back(std::move(victim.name));
            erase_entry(std::prev(lru_.end()));
        }
        lru_.push_front({.key = std::move(key), .name = "pgco_" + std::to_string(++next_)});
        index_.emplace(lru_.front().key, lru_.begin());
        return recent_ = lru_.begin();
    }

    void erase(iterator it)
    {
        if (it->prepared)
            evicted.push_back(it->name);
        erase_entry(it);
    }

    /// Forgets everything (new session, DISCARD ALL, DEALLOCATE ALL).
    void clear() noexcept
    {
        index_.clear();
        lru_.clear();
        evicted.clear();
        recent_ = lru_.end();
    }

    std::size_t size() const noexcept { return lru_.size(); }

    std::vector<std::string> evicted; // names to DEALLOCATE before the next statement

private:
    iterator touch(iterator it)
    {
        if (it != lru_.begin())
            lru_.splice(lru_.begin(), lru_, it); // most recently used first
        return recent_ = it;
    }
    void erase_entry(iterator it)
    {
        if (it == recent_)
            recent_ = lru_.end();
        index_.erase(it->key);
        lru_.erase(it);
    }

    std::list<cached_statement> lru_;
    std::unordered_map<std::string_view, iterator> index_;
    iterator recent_ = lru_.end(); // the entry found or added last (see find_recent)
    std::uint64_t next_ = 0;
};

/// One statement of a pipelined batch and what became of it.
struct batch_entry
{
    // In: `key` as built by statement_key; its first `sql_length` bytes are the SQL text,
    // followed by a NUL.
    std::string_view key;
    std::size_t sql_length = 0;
    params_view params;
    binary_check binary = nullptr; // which results pgco may ask for in binary (null: none)

    // In, optional: given a successful result of at most `early_rows` rows as soon as it
    // arrives, rather than keeping it until the batch's Sync in `res` (see
    // pool.hpp, `early_result`). Called on the thread running the batch.
    void (*sink)(void* ctx, result& r) noexcept = nullptr;
    void* sink_ctx = nullptr;
    static constexpr int early_rows = 64; // bounds the work a sink does per result

    // Out: exactly one of these after run_batch (`consumed`: the sink took the result).
    std::optional<result> res;
    std::optional<error> err;
    bool consumed = false;
    bool rerun = false; // rolled back or skipped with the batch: run it again, it had no effect
    unsigned reprepared = 0;

    /// As `*this = batch_entry{}`, without building and moving a whole entry (with its
    /// optional error) for every statement a recycled item carries.
    void reset() noexcept
    {
        key = {};
        sql_length = 0;
        params = {};
        binary = nullptr;
        sink = nullptr;
        sink_ctx = nullptr;
        res.reset();
        err.reset();
        consumed = rerun = false;
        reprepared = 0;
    }
};

/// Throws `errc::invalid_parameter` if `sql` contains a NUL byte, which libpq would take for
/// the end of the statement.
void check_sql_text(std::string_view sql);

/// `sql` + NUL + the parameter types, into `out` (reusing its buffer).
void statement_key(std::string& out, std::string_view sql, const params_view& params);

/// A statement run alone on the wire, while it runs (connection.cpp): kept by the connection
/// rather than in exec_params' coroutine frame, which must stay small enough for Asio to
/// recycle it.
struct wire_call;
struct wire_call_deleter
{
    void operator()(wire_call* w) const noexcept;
};

struct connection_impl
{
    using socket_type = boost::asio::generic::stream_protocol::socket;
    using wait_type = socket_type::wait_type;

    explicit connection_impl(boost::asio::any_io_executor e) : ex(std::move(e)), sock(ex) {}
    ~connection_impl() { close(); }
    connection_impl(const connection_impl&) = delete;

    boost::asio::any_io_executor ex;
    PGconn* conn = nullptr;
    // Watches libpq's socket for readiness. libpq owns the descriptor: it is always released,
    // never closed, and released before libpq may close or replace it.
    socket_type sock;
    std::string sql;    // NUL-terminated statement or cache key, reused between queries (only
                        // as current as exec_params needs it)
    std::string target; // redacted connection string, for messages
    bool busy = false;
    bool request_sent = false;
    bool unfinished = false; // a cancelled request still has results to discard
    bool doomed = false;     // the server announced it is closing this connection (57P01...)
    std::chrono::milliseconds query_timeout{0};
    early_read read_policy;           // whether to read right after sending (see early_read.hpp)
    edge_wait<socket_type> new_input; // the wait without re-arming (see edge_wait.hpp)
    // Set by a pool before `connect`: no host is tried after it (connect_timeout applies to
    // each host, so several hosts could otherwise take longer than the pool may wait).
    std::optional<std::chrono::steady_clock::time_point> connect_deadline;
    statement_cache cache;
    // Neither TLS nor GSS encryption: pgco may write and read protocol messages on the socket
    // itself while libpq is idle (see wire.hpp).
    bool plain_socket = false;
    std::string wire_out; // a batch's messages, reused between batches
    std::string wire_in;  // what was received and not parsed yet
    // The rows of the statement whose answer is being read on the wire, until its completion
    // copies them into its result (see wire_rows.hpp): reused between statements.
    std::vector<wire_rows::cell> wire_cells;
    std::string wire_values;
    std::uint64_t wire_requests = 0; // batches and statements sent that way (for tests)
    // A cancelled request on the wire still has answers to drop (see `unfinished`), the first
    // `wire_pending` bytes of `wire_in` already received.
    bool wire_unfinished = false;
    std::size_t wire_pending = 0;
    std::unique_ptr<wire_call, wire_call_deleter> wire_single; // made on first use

    void release_socket() noexcept
    {
        if (sock.is_open())
            sock.release();
    }

    void close() noexcept
    {
        release_socket();
        if (conn) {
            PQfinish(conn);
            conn = nullptr;
        }
        cache.clear(); // prepared statements die with the session
        plain_socket = false;
        wire_in.clear();
        wire_unfinished = false;
        wire_pending = 0;
        unfinished = false;
        doomed = false;
    }

    /// Open, idle, outside any transaction and not condemned: fit to be handed to someone else.
    bool reusable() const noexcept
    {
        return conn && !busy && !unfinished && !doomed && PQstatus(conn) == CONNECTION_OK &&
               PQtransactionStatus(conn) == PQTRANS_IDLE;
    }

    /// For an idle connection whose socket became readable: reads what arrived and says whether
    /// the connection is still alive (a notice or parameter change) or gone (EOF, an error
    /// such as 57P01 terminating the session).
    bool alive_after_idle_input() noexcept
    {
        if (!conn || !PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK)
            return false;
        // PQconsumeInput only reads; parsing happens here, and it is what hands a FATAL
        // message (57P01) to the notice receiver, which sets `doomed`. Notifications nobody
        // listens for are dropped; LISTEN support will read them instead.
        while (PGnotify* n = PQnotifies(conn))
            PQfreemem(n);
        return !doomed && PQstatus(conn) == CONNECTION_OK;
    }

    /// Wraps libpq's socket (TCP or Unix) for Asio, without taking ownership.
    void assign_socket(int fd)
    {
        sockaddr_storage addr{};
        socklen_t len = sizeof addr;
        int family = ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0
                         ? addr.ss_family
                         : AF_INET;
        sock.assign(socket_type::protocol_type(family, family == AF_UNIX ? 0 : IPPROTO_TCP), fd);
        new_input.attach(sock);
    }

    /// Completes (with `void(error_code)`) when data, EOF or an error can be read, without
    /// reading anything: libpq does the reading.
    ///
    /// A wait, not a one-byte MSG_PEEK receive: the receive was tried at once (and failed, as
    /// libpq's own read just did) and again when the reactor saw the socket readable, two
    /// system calls per wait that a wait does not make. Nor can a wait miss an edge of Asio's
    /// edge-triggered epoll reactor when another thread's run sees the socket turn readable
    /// first: Boost 1.81 starts every non-speculative operation with EPOLL_CTL_MOD, which makes
    /// the kernel report a socket that is readable already.
    template <class Token>
    auto async_wait_readable(Token&& token)
    {
        return sock.async_wait(boost::asio::socket_base::wait_read, std::forward<Token>(token));
    }

    /// As async_wait_readable; with `fresh`, only for input the server sends after this wait's
    /// request was sent, nothing read since: one system call less (see edge_wait.hpp).
    template <class Token>
    auto async_wait_input(bool fresh, Token&& token)
    {
        return new_input.async_wait(sock, fresh, std::forward<Token>(token));
    }
};

/// Errors from a wait for input that still mean "go and ask libpq".
inline bool readable_anyway(const boost::system::error_code& ec)
{
    return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
           ec == boost::asio::error::connection_aborted || ec == boost::asio::error::broken_pipe;
}

/// The implementation behind a connection (for the pool).
connection_impl& impl_of(connection& c) noexcept;

/// Runs `entries` in one pipeline with one Sync on an idle connection (the pool's
/// multiplexing). Every entry ends with a result, an error, or `rerun` (its effects were
/// rolled back with the batch, or it never ran). Throws only if the connection was unusable
/// before anything was sent.
boost::asio::awaitable<void> run_batch(std::shared_ptr<connection_impl> self,
                                       std::span<batch_entry*> entries);

} // namespace pgco::detail
