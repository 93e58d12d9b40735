#pragma once

#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <memory>
#include <mutex>
#include <utility>

namespace pgco::detail {

// Why not parallel_group(...).async_wait(wait_for_one(), use_awaitable) as it stands: Boost
// 1.81 connects the group to the caller's cancellation slot only after it has launched the
// operations. On an io_context that several threads run, the operations can complete on
// another thread meanwhile and resume the caller, whose next operation takes the same slot:
// two threads then write to it at once (asio issue #1630). Seen here as a leaked handler, and
// worse, a slot that holds the finished group's handler, so that cancelling the caller no
// longer reaches what it waits for.
//
// So the caller's slot gets a relay before anything is launched, and the group connects to the
// relay's own signal, which lives until launching is over. A cancellation that arrives while
// the group is still being launched is held back until it has been.
class cancel_relay
{
public:
    /// From the caller's slot, on whichever thread cancels.
    void request(boost::asio::cancellation_type_t type)
    {
        std::lock_guard lock(m_);
        if (launched_)
            signal_.emit(type);
        else
            pending_ |= type;
    }

    /// Once the group is launched: from now on requests go straight through.
    void launched()
    {
        std::lock_guard lock(m_);
        launched_ = true;
        if (pending_ != boost::asio::cancellation_type::none)
            signal_.emit(pending_);
    }

    boost::asio::cancellation_slot slot() noexcept { return signal_.slot(); }

private:
    std::mutex m_;
    bool launched_ = false;
    boost::asio::cancellation_type_t pending_ = boost::asio::cancellation_type::none;
    boost::asio::cancellation_signal signal_;
};

/// The caller's handler, with the relay's slot in place of the caller's.
template <class Handler>
struct relayed_handler
{
    Handler handler;
    std::shared_ptr<cancel_relay> relay; // null when the caller cannot be cancelled

    using cancellation_slot_type = boost::asio::cancellation_slot;
    cancellation_slot_type get_cancellation_slot() const noexcept
    {
        return relay ? relay->slot() : cancellation_slot_type();
    }

    using executor_type = boost::asio::associated_executor_t<Handler>;
    executor_type get_executor() const noexcept
    {
        return boost::asio::get_associated_executor(handler);
    }

    using allocator_type = boost::asio::associated_allocator_t<Handler>;
    allocator_type get_allocator() const noexcept
    {
        return boost::asio::get_associated_allocator(handler);
    }

    template <class... Args>
    void operator()(Args&&... args)
    {
        std::move(handler)(std::forward<Args>(args)...);
    }
};

struct initiate_first_of
{
    template <class Handler, class Group>
    void operator()(Handler handler, Group group) const
    {
        auto slot = boost::asio::get_associated_cancellation_slot(handler);
        std::shared_ptr<cancel_relay> relay;
        if (slot.is_connected()) {
            relay = std::make_shared<cancel_relay>();
            // The copy first: what the request sets off can complete the group and resume the
            // caller on another thread, which drops this handler while it still runs.
            slot.assign([relay](boost::asio::cancellation_type_t type) {
                auto keep = relay;
                keep->request(type);
            });
        }
        // `relay` here keeps the signal alive while the group writes to its slot, even if the
        // group completes and its handler is gone before async_wait returns.
        std::move(group).async_wait(boost::asio::experimental::wait_for_one(),
                                    relayed_handler<Handler>{std::move(handler), relay});
        if (relay)
            relay->launched();
    }
};

/// Runs the operations (deferred) at once until the first completes, then cancels the others
/// and waits for them. Completes, as parallel_group does, with the order in which they
/// completed followed by each one's results. Safe where several threads run the executor.
template <class... Ops>
auto first_of(Ops&&... ops)
{
    auto group = boost::asio::experimental::make_parallel_group(std::forward<Ops>(ops)...);
    using signature = typename decltype(group)::signature;
    return boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&, signature>(
        initiate_first_of{}, boost::asio::use_awaitable, std::move(group));
}

} // namespace pgco::detail
