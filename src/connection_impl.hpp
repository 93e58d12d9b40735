#pragma once

// The state behind pgco::connection, shared with the pool (which watches idle connections).
// Internal: not installed, includes libpq.

#include <pgco/connection.hpp>

#include <boost/asio/async_result.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <libpq-fe.h>
#include <poll.h>

#include <string>
#include <utility>

namespace pgco::detail {

struct connection_impl
{
    using wait_type = boost::asio::posix::stream_descriptor::wait_type;

    explicit connection_impl(boost::asio::any_io_executor e) : ex(std::move(e)), sock(ex) {}
    ~connection_impl() { close(); }
    connection_impl(const connection_impl&) = delete;

    boost::asio::any_io_executor ex;
    PGconn* conn = nullptr;
    // Watches libpq's socket for readiness. libpq owns the descriptor: it is always released,
    // never closed, and released before libpq may close or replace it.
    boost::asio::posix::stream_descriptor sock;
    std::string sql;    // NUL-terminated copy of the statement, reused between queries
    std::string target; // redacted connection string, for messages
    bool busy = false;
    bool request_sent = false;
    bool unfinished = false; // a cancelled request still has results to discard
    bool doomed = false;     // the server announced it is closing this connection (57P01...)
    bool recheck = false;    // the last wait was cut short because the socket was ready

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
        if (!conn || !PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK || doomed)
            return false;
        // Drop notifications nobody listens for; LISTEN support will read them instead.
        while (PGnotify* n = PQnotifies(conn))
            PQfreemem(n);
        return true;
    }

    /// Waits until the socket is ready for `w`, like `sock.async_wait`.
    ///
    /// Asio's epoll reactor is edge-triggered and never tries a wait speculatively: if another
    /// thread's reactor run sees the socket turn ready between libpq's last read and this
    /// registration, the edge is consumed with no operation queued and the wait would never
    /// end. So after registering, look once more; if the socket is ready already, cut the wait
    /// short (it completes with operation_aborted and `recheck` set) and let the caller ask
    /// libpq again.
    template <class Token>
    auto async_wait_ready(wait_type w, Token&& token)
    {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [this, w](auto handler) {
                recheck = false;
                sock.async_wait(w, std::move(handler));
                pollfd p{sock.native_handle(),
                         static_cast<short>(w == wait_type::wait_read ? POLLIN : POLLOUT), 0};
                if (::poll(&p, 1, 0) > 0) {
                    recheck = true;
                    sock.cancel();
                }
            },
            token);
    }
};

/// The implementation behind a connection (for the pool).
connection_impl& impl_of(connection& c) noexcept;

} // namespace pgco::detail
