#pragma once

#include <pgco/connection.hpp>

#include <boost/container/small_vector.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgco {

namespace detail {

/// A statement holding its own copies of the SQL text and the encoded parameters, for work
/// that runs after the caller's arguments are gone.
struct owned_statement
{
    // Inline room for a few parameters: no allocation per statement in the common case.
    template <class T>
    using few = boost::container::small_vector<T, 4>;

    std::string key; // the SQL, a NUL, the parameter type OIDs (the statement cache's key)
    std::size_t sql_length = 0;
    few<oid> types;
    few<std::string> values;   // encoded parameters (empty for NULLs)
    few<const char*> pointers; // into `values`, null for NULLs: refreshed by assign and moves
    few<int> lengths, formats;

    owned_statement() = default;
    // A copy or a move may relocate short strings: the pointers are taken again.
    owned_statement(const owned_statement& other);
    owned_statement& operator=(const owned_statement& other);
    owned_statement(owned_statement&& other) noexcept;
    owned_statement& operator=(owned_statement&& other) noexcept;

    void assign(std::string_view sql, const params_view& p);
    params_view view() const noexcept;
    std::string_view sql() const noexcept { return {key.data(), sql_length}; }
};

} // namespace detail

/// Statements sent together in one pipeline, in one round trip, with one Sync: they run as
/// one implicit transaction, so either all of them take effect or none does.
///
/// ```
/// pgco::batch b;
/// b.add("INSERT INTO t (id, v) VALUES ($1, $2)", 1, "one");
/// b.add("UPDATE counters SET n = n + 1 WHERE name = $1", "t");
/// std::vector<pgco::result> results = co_await pool.pipeline(b);
/// ```
///
/// Parameters are encoded and copied when added. SELECT / INSERT / UPDATE / DELETE / WITH /
/// VALUES / TABLE statements go through the connection's statement cache. Transaction control
/// and statements that cannot run inside a transaction block (VACUUM...) do not belong in a
/// batch.
class batch
{
public:
    /// Appends a statement with bound parameters. Throws `errc::invalid_parameter` (and adds
    /// nothing) for a value that cannot be sent or SQL text with a NUL byte.
    template <class... Params>
    batch& add(std::string_view sql, const Params&... params)
    {
        detail::param_pack<sizeof...(Params)> pack(params...);
        if (size_ < statements_.size()) {
            // A statement kept by clear(): its buffers are reused, and its cache key too when
            // the text is the same. Past size_, so a throw leaves the batch as it was.
            statements_[size_].assign(sql, pack.view());
        } else {
            detail::owned_statement statement;
            statement.assign(sql, pack.view()); // may throw: the batch is then left as it was
            statements_.push_back(std::move(statement));
        }
        ++size_;
        return *this;
    }

    /// Number of statements.
    std::size_t size() const noexcept { return size_; }
    /// True if there are none.
    bool empty() const noexcept { return size_ == 0; }
    /// Removes every statement. Their buffers are kept for the statements added next (a batch
    /// refilled in a loop allocates nothing once warm); assign `pgco::batch{}` to free them.
    void clear() noexcept { size_ = 0; }

    /// The statements (for the connection that runs them).
    std::span<detail::owned_statement> statements() noexcept { return {statements_.data(), size_}; }

private:
    std::vector<detail::owned_statement> statements_; // the first size_ are the batch's
    std::size_t size_ = 0;
};

} // namespace pgco
