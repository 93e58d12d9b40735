#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace pgco::detail {

/// A vector whose buffer is taken from, and given back to, a small per-thread stock, for
/// vectors a batch fills and drops (a batch's commands, the callers it resumes). A block of
/// several KB freed and taken again per batch coalesces with the blocks libpq frees for each
/// result, and glibc then splits it for every result libpq allocates instead of handing back
/// the block just freed: ~150 instructions more per statement in malloc (W3 under callgrind).
template <class T>
class spare_vector
{
public:
    spare_vector()
    {
        auto& s = stock();
        if (!s.empty()) {
            v_ = std::move(s.back());
            s.pop_back();
        }
    }
    ~spare_vector()
    {
        if (v_.capacity() == 0) // moved from (handlers move several times on their way)
            return;
        v_.clear();
        auto& s = stock();
        if (s.size() < max_stock && v_.capacity() <= kept)
            s.push_back(std::move(v_));
    }
    spare_vector(spare_vector&& other) noexcept : v_(std::move(other.v_)) {}
    spare_vector& operator=(spare_vector&&) = delete;
    spare_vector(const spare_vector&) = delete;
    spare_vector& operator=(const spare_vector&) = delete;

    /// The largest capacity the stock keeps: a buffer beyond it is freed when dropped.
    static constexpr std::size_t kept = 4096;

    std::vector<T>& operator*() noexcept { return v_; }
    std::vector<T>* operator->() noexcept { return &v_; }

private:
    static constexpr std::size_t max_stock = 4;
    static std::vector<std::vector<T>>& stock()
    {
        thread_local std::vector<std::vector<T>> s;
        return s;
    }

    std::vector<T> v_;
};

} // namespace pgco::detail
