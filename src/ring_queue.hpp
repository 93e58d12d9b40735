#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

namespace pgco::detail {

/// A FIFO queue in one ring buffer that only grows: unlike std::deque, which allocates and
/// frees a 512-byte node per 32 elements passing through, a queue that fills and drains once
/// per batch costs no allocation once it has reached its largest size.
template <class T>
class ring_queue
{
public:
    bool empty() const noexcept { return count_ == 0; }
    std::size_t size() const noexcept { return count_; }

    /// The i-th element from the front.
    T& operator[](std::size_t i) noexcept { return buf_[(head_ + i) & (buf_.size() - 1)]; }
    T& front() noexcept { return buf_[head_]; }

    void pop_front()
    {
        buf_[head_] = T(); // releases what it holds now, not when the slot is reused
        head_ = (head_ + 1) & (buf_.size() - 1);
        --count_;
    }
    void push_back(T v)
    {
        grow_if_full();
        buf_[(head_ + count_) & (buf_.size() - 1)] = std::move(v);
        ++count_;
    }
    void push_front(T v)
    {
        grow_if_full();
        head_ = (head_ + buf_.size() - 1) & (buf_.size() - 1);
        buf_[head_] = std::move(v);
        ++count_;
    }
    void swap(ring_queue& other) noexcept
    {
        buf_.swap(other.buf_);
        std::swap(head_, other.head_);
        std::swap(count_, other.count_);
    }

private:
    void grow_if_full()
    {
        if (count_ < buf_.size())
            return;
        std::vector<T> bigger(std::max<std::size_t>(16, buf_.size() * 2)); // a power of two
        for (std::size_t i = 0; i < count_; ++i)
            bigger[i] = std::move((*this)[i]);
        buf_.swap(bigger);
        head_ = 0;
    }

    std::vector<T> buf_; // its size is 0 or a power of two
    std::size_t head_ = 0, count_ = 0;
};

} // namespace pgco::detail
