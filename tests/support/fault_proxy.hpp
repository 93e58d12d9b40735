#pragma once

// A TCP proxy for tests that breaks connections on command: cuts, resets, silent partitions,
// latency, a cut after N bytes, refused connections. No PostgreSQL knowledge; it moves bytes.

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

namespace pgco::test {

/// A TCP proxy on 127.0.0.1 between a client and a server, with faults on command. It runs
/// on its own thread and io_context; every method is thread-safe (but must not be called from
/// the proxy's own thread, which only runs its internals).
///
/// Each client connection gets one connection to the target, opened after the accept (with a
/// 5-second timeout; on failure the client connection is closed). Bytes move both ways in
/// chunks of up to 16 KiB; a half-close (FIN) from either side is passed on to the other, and
/// the connection is gone once both directions have finished.
class fault_proxy
{
public:
    /// Starts listening on 127.0.0.1 on a free port, and the proxy's thread. `target_host` must
    /// be an IP address literal ("127.0.0.1"); it is never resolved by name.
    fault_proxy(std::string target_host, unsigned short target_port);

    /// Closes every connection and the listener, and stops the thread.
    ~fault_proxy();

    fault_proxy(const fault_proxy&) = delete;
    fault_proxy& operator=(const fault_proxy&) = delete;

    /// The port clients connect to, on 127.0.0.1.
    unsigned short port() const;

    /// Client connections open now (refused ones are never counted).
    std::size_t connections() const;

    /// Client connections accepted so far, refused ones included.
    std::size_t accepted() const;

    /// Closes both sides of every current connection with a FIN (unread bytes are dropped first,
    /// so the kernel does not turn the close into a reset). In effect when it returns: clients
    /// read end-of-file.
    void cut_all();

    /// Aborts every current connection: the client side is reset (SO_LINGER 0, then close), so
    /// clients read ECONNRESET; the server side is closed normally. In effect when it returns.
    void reset_all();

    /// While on, a silent partition: connections are still accepted and bytes are still read from
    /// both sides, but nothing is forwarded, not even a FIN (held until the stall ends). Bytes
    /// read during the stall, and bytes still queued (by `delay`) when it begins, are discarded:
    /// turning the stall off does not deliver them, as if they were lost on the wire. In effect
    /// when it returns.
    void stall(bool on);

    /// Forwards every chunk `d` after it was read (0 = at once), in order, both ways. Applies to
    /// chunks read from now on. A latency, not a bandwidth limit: reading continues meanwhile
    /// (up to 1 MiB queued per direction).
    void delay(std::chrono::milliseconds d);

    /// For connections accepted from now on: once `bytes` server-to-client bytes have been
    /// forwarded on a connection, cuts it (both sides, as `cut_all`). A chunk crossing the limit
    /// is forwarded only up to it. 0 = off. Connections already open keep their setting.
    void drop_after(std::size_t bytes);

    /// While on, new connections are accepted and closed at once (a FIN, no bytes). Connections
    /// already open are untouched. In effect when it returns.
    void refuse(bool on);

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace pgco::test
