#pragma once

// The state behind pgco::connection, shared with the pool (which watches idle connections).
// Internal: not installed, includes libpq.

#include <pgco/connection.hpp>

#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>

#include <libpq-fe.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <netinet/in.h>

#include <chrono>
#include <string>
#include <utility>

namespace pgco::detail {

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
    std::string sql;    // NUL-terminated copy of the statement, reused between queries
    std::string target; // redacted connection string, for messages
    bool busy = false;
    bool request_sent = false;
    bool unfinished = false; // a cancelled request still has results to discard
    bool doomed = false;     // the server announced it is closing this connection (57P01...)
    std::chrono::milliseconds query_timeout{0};

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
    }

    /// Completes when data (or EOF, or an error) can be read, without consuming anything:
    /// libpq does the reading.
    ///
    /// Why a one-byte MSG_PEEK receive and not `async_wait(wait_read)`: Asio's epoll reactor is
    /// edge-triggered and never tries a wait speculatively, so when another thread's reactor
    /// run sees the socket turn readable between libpq's last read and the registration of the
    /// wait, the edge is consumed with no operation queued and the wait never ends. A receive
    /// is tried speculatively under the reactor's descriptor lock, which closes that window.
    template <class Token>
    auto async_wait_readable(Token&& token)
    {
        return sock.async_receive(boost::asio::buffer(&peek_byte, 1),
                                  boost::asio::socket_base::message_peek,
                                  std::forward<Token>(token));
    }

    char peek_byte = 0;
};

/// Errors from `async_wait_readable` that still mean "go and ask libpq".
inline bool readable_anyway(const boost::system::error_code& ec)
{
    return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
           ec == boost::asio::error::connection_aborted || ec == boost::asio::error::broken_pipe;
}

/// The implementation behind a connection (for the pool).
connection_impl& impl_of(connection& c) noexcept;

} // namespace pgco::detail
