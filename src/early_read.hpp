#pragma once

#include <chrono>

namespace pgco::detail {

/// Decides, after a request was sent, whether to read at once or to wait for the socket first.
///
/// A read right after the send finds the answer only if the server produced it during the
/// send: with the server on the client's CPU, it runs when the send wakes it and preempts the
/// client, and that send then takes the server's whole turn (~15 µs here, against ~4 µs for
/// one that was not interrupted). Otherwise the read comes back empty (EAGAIN), a system call
/// for nothing on top of the wait that follows; with the server on another host that is every
/// query. So: read at once only after a send that took much longer than sends usually take.
/// Per connection; not thread-safe (a connection runs one request at a time).
class early_read
{
public:
    using duration = std::chrono::steady_clock::duration;

    /// Called with how long sending a request took; true if reading at once may find the
    /// answer.
    bool after_send(duration took) noexcept
    {
        if (quick_.count() == 0) { // nothing to compare with yet: read, as before
            quick_ = took.count() > 0 ? took : duration(1);
            return true;
        }
        bool interrupted = took > 2 * quick_;
        // `quick_` follows a low quantile of the send times: a faster send pulls it down by a
        // quarter of the difference, any other lets it drift up by 1/64, so that one freak
        // fast sample does not stick.
        if (took < quick_)
            quick_ -= (quick_ - took) / 4;
        else
            quick_ += quick_ / 64 + duration(1);
        return interrupted;
    }

    /// The send time taken as usual (for tests).
    duration quick() const noexcept { return quick_; }

private:
    duration quick_{0};
};

} // namespace pgco::detail
