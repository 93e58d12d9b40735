#pragma once

// A wait for input that arrives after the wait was asked for, without the system call that
// Asio's own wait makes to re-arm the socket. Internal: built on Boost.Asio's detail API.

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/socket_base.hpp>
#include <boost/system/error_code.hpp>
#include <boost/version.hpp>

#include <cerrno>
#include <type_traits>
#include <utility>

#include <sys/socket.h>

// The edge wait relies on how Boost 1.81's epoll reactor treats an operation that allows a
// speculative attempt (see below). Elsewhere (another Boost release, the io_uring or select
// backends) it is Asio's own wait.
#if BOOST_VERSION / 100 == 1081 && defined(BOOST_ASIO_HAS_EPOLL) &&                                \
    !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT) && !defined(BOOST_ASIO_DISABLE_EPOLL)
#define PGCO_EDGE_WAIT 1
#include <boost/asio/detail/bind_handler.hpp>
#include <boost/asio/detail/fenced_block.hpp>
#include <boost/asio/detail/handler_alloc_helpers.hpp>
#include <boost/asio/detail/handler_cont_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/detail/memory.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#else
#define PGCO_EDGE_WAIT 0
#endif

namespace pgco::detail {

// Why: for every wait for readability Boost 1.81 calls epoll_ctl(EPOLL_CTL_MOD) before it
// queues the operation, because the kernel reports an edge-triggered socket that is readable
// already only when it is re-armed. That is one system call per wait, a quarter of what a
// sequential query costs (its send, its receive, epoll_wait and this).
//
// How: an operation that allows a speculative attempt is queued without re-arming. The
// reactor tries it at once only if it saw the socket turn readable while no operation was
// waiting, or if the last operation did not say it exhausted the input (its per-socket
// `try_speculative_` flag). This wait's attempt then looks for input with a one-byte MSG_PEEK
// receive, and completes if there is some; otherwise it waits for the next edge the kernel
// reports. When it completes at an edge it says "done, and exhausted", as Asio's own receive
// does after it emptied the socket, which clears the flag: in a loop of requests on one
// connection only a wait after input nobody waited for, or after one of Asio's own waits
// (which leave the flag set), costs the peek.
//
// The price: input that was in the socket before the last reported edge and that nobody read
// is not reported again. So the caller may use this wait only when everything it waits for is
// sent by the server after the wait's request was sent: the first wait after a request sent on
// an idle connection, before anything was read. Each arrival of new data is an edge, and
// Linux reports a pending edge only if the socket is still readable when epoll_wait runs.
// Also, a wait queued after this one on the same socket is served at the following edge only;
// connections have one wait for input at a time.
template <class Socket>
class edge_wait
{
public:
    /// Binds the wait to `s`'s reactor (looked up once: the lookup takes a lock).
    void attach(Socket& s)
    {
#if PGCO_EDGE_WAIT
        auto& ctx = boost::asio::query(s.get_executor(), boost::asio::execution::context);
        reactor_ = &boost::asio::use_service<boost::asio::detail::reactor>(ctx);
#else
        (void)s;
#endif
    }

    /// Completes with `void(error_code)` when `s` is readable; with `only_new`, at the next
    /// input (see above). One type of operation either way, so that callers can choose at run
    /// time.
    template <class Token>
    auto async_wait(Socket& s, bool only_new, Token&& token)
    {
#if PGCO_EDGE_WAIT
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            initiation{only_new ? reactor_ : nullptr, &s}, token);
#else
        (void)only_new;
        return s.async_wait(boost::asio::socket_base::wait_read, std::forward<Token>(token));
#endif
    }

#if PGCO_EDGE_WAIT
private:
    using reactor = boost::asio::detail::reactor;
    static_assert(std::is_same_v<reactor, boost::asio::detail::epoll_reactor>);

    // basic_socket keeps its implementation protected; a pointer to member named through a
    // derived class reaches it without pretending that the socket is of that class.
    struct internals : Socket
    {
        static auto& of(Socket& s) { return (s.*(&internals::impl_)).get_implementation(); }
    };

    template <class Handler, class IoExecutor>
    class op : public boost::asio::detail::reactor_op
    {
    public:
        BOOST_ASIO_DEFINE_HANDLER_PTR(op);

        op(const boost::system::error_code& success_ec, Handler& handler, const IoExecutor& io_ex,
           int descriptor)
            : reactor_op(success_ec, &op::do_perform, &op::do_complete),
              handler_(std::move(handler)), work_(handler_, io_ex), descriptor_(descriptor)
        {}

        static status do_perform(reactor_op* base)
        {
            op* o = static_cast<op*>(base);
            if (starting() != o)
                return done_and_exhausted; // at an edge
            // The attempt the reactor makes as the wait starts (see above): is there input?
            char byte;
            for (;;) {
                if (::recv(o->descriptor_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) >= 0)
                    return done_and_exhausted; // data, or the end of the stream
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return not_done;
                if (errno != EINTR)
                    return done_and_exhausted; // an error: libpq reads it
            }
        }

        // As Asio's reactive_wait_op completes.
        static void do_complete(void* owner, boost::asio::detail::operation* base,
                                const boost::system::error_code&, std::size_t)
        {
            namespace ad = boost::asio::detail;
            op* o = static_cast<op*>(base);
            ptr p = {ad::addressof(o->handler_), o, o};
            ad::handler_work<Handler, IoExecutor> w(std::move(o->work_));
            // The handler may own the memory the operation lives in: move it out first.
            ad::binder1<Handler, boost::system::error_code> handler(o->handler_, o->ec_);
            p.h = ad::addressof(handler.handler_);
            p.reset();
            if (owner) {
                ad::fenced_block b(ad::fenced_block::half);
                w.complete(handler, handler.handler_);
            }
        }

    private:
        Handler handler_;
        boost::asio::detail::handler_work<Handler, IoExecutor> work_;
        int descriptor_;
    };

    // The operation this thread is starting: the reactor's attempt at the start runs on the
    // starting thread, inside start_op; attempts at an edge run wherever the reactor runs.
    static boost::asio::detail::reactor_op*& starting()
    {
        static thread_local boost::asio::detail::reactor_op* op = nullptr;
        return op;
    }

    // As Asio's reactor_op_cancellation (protected in its socket service).
    struct cancellation
    {
        reactor* r;
        reactor::per_descriptor_data* data;
        int descriptor;

        void operator()(boost::asio::cancellation_type_t type)
        {
            using ct = boost::asio::cancellation_type;
            if (!!(type & (ct::terminal | ct::partial | ct::total)))
                r->cancel_ops_by_key(descriptor, *data, reactor::read_op, this);
        }
    };

    struct initiation
    {
        reactor* r;
        Socket* s;

        template <class Handler>
        void operator()(Handler&& h) const
        {
            namespace ad = boost::asio::detail;
            using handler_t = std::decay_t<Handler>;
            using executor_t = typename Socket::executor_type;
            handler_t handler(std::forward<Handler>(h));
            if (!r) { // Asio's own wait: not attached, or not only new input
                s->async_wait(boost::asio::socket_base::wait_read, std::move(handler));
                return;
            }
            auto& impl = internals::of(*s);
            bool is_continuation = boost_asio_handler_cont_helpers::is_continuation(handler);
            auto slot = boost::asio::get_associated_cancellation_slot(handler);

            using op_t = op<handler_t, executor_t>;
            typename op_t::ptr p = {ad::addressof(handler), op_t::ptr::allocate(handler), 0};
            p.p = new (p.v)
                op_t(boost::system::error_code(), handler, s->get_executor(), impl.socket_);
            if (slot.is_connected())
                p.p->cancellation_key_ =
                    &slot.template emplace<cancellation>(r, &impl.reactor_data_, impl.socket_);
            // allow_speculative: the point of it all (see above). The operation may be complete
            // and gone by the time start_op returns: it is not touched after.
            starting() = p.p;
            r->start_op(reactor::read_op, impl.socket_, impl.reactor_data_, p.p, is_continuation,
                        true);
            starting() = nullptr;
            p.v = p.p = 0;
        }
    };

    reactor* reactor_ = nullptr;
#endif
};

} // namespace pgco::detail
