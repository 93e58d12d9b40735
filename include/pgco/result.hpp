#pragma once

#include <pgco/detail/value_traits.hpp>
#include <pgco/error.hpp>
#include <pgco/types.hpp>

#include <boost/pfr/core.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

struct pg_result; // libpq's PGresult, kept out of user code

namespace pgco {

namespace detail {
struct wire_rows; // a result pgco read off the wire itself (src/wire_rows.hpp)
} // namespace detail

/// The complete result of one statement, owning its buffer (libpq's, or pgco's own for a
/// statement whose answer it read itself). Values are read in place.
///
/// Decoding is checked: `as<Row>()` compares the column count and every column's type with
/// `Row` before it reads a value, and fails with `column_count_mismatch`, `type_mismatch`,
/// `unexpected_null` or `invalid_value`, naming the column.
///
/// Each column is decoded in the format it arrived in: text, or binary where pgco asked for it
/// (only on the typed paths, `query` and `query_one`, and only when every column's type is
/// one whose binary form it reads: see `detail::binary_result_safe`). Both give the same
/// values and the same failures.
class result
{
public:
    result() noexcept = default;
    /// Takes ownership of a libpq result.
    explicit result(pg_result* r) noexcept : res_(r) {}
    /// Takes ownership of a result pgco read off the wire itself (internal).
    explicit result(detail::wire_rows* w) noexcept : wire_(w) {}

    /// Number of rows.
    std::size_t size() const noexcept;
    /// True if there are no rows.
    bool empty() const noexcept { return size() == 0; }
    /// Number of columns.
    std::size_t columns() const noexcept;
    /// Name of column `c` as the server reported it.
    std::string_view column_name(std::size_t c) const noexcept;
    /// Type OID of column `c`.
    oid column_type(std::size_t c) const noexcept;
    /// True if the value at (`row`, `c`) is NULL.
    bool is_null(std::size_t row, std::size_t c) const noexcept;
    /// True if column `c` arrived in binary format rather than text.
    bool is_binary(std::size_t c) const noexcept;
    /// The bytes of the value at (`row`, `c`) in the column's format (see `is_binary`): its
    /// text form, unless binary results were requested, which pgco does only on the typed paths
    /// and never for `connection::exec`. Empty for NULL. Valid while `*this` lives.
    std::string_view value(std::size_t row, std::size_t c) const noexcept;
    /// Rows inserted, updated, deleted, selected... as in the command tag; 0 if none.
    std::uint64_t rows_affected() const noexcept;
    /// The command tag, e.g. "INSERT 0 1", "COMMIT", "ROLLBACK".
    std::string_view command_status() const noexcept;

    /// Decodes the value at (`row`, `c`) as `T` (use `std::optional<T>` where NULL may appear).
    template <class T>
    T get(std::size_t row, std::size_t c) const
    {
        return decode_field<T>(row, c, check_column_type<T>(c));
    }

    /// Maps every row to `Row`: an aggregate whose fields match the columns in order (through
    /// Boost.PFR), or a single value type for one-column results.
    template <class Row>
    std::vector<Row> as() const
    {
        auto formats = check_shape<Row>();
        std::vector<Row> rows;
        rows.reserve(size());
        for (std::size_t r = 0, n = size(); r < n; ++r)
            rows.push_back(decode_row<Row>(r, formats));
        return rows;
    }

    /// Maps row `r` to `Row` (see `as`).
    template <class Row>
    Row row_as(std::size_t r) const
    {
        return decode_row<Row>(r, check_shape<Row>());
    }

private:
    [[noreturn]] void throw_count_mismatch(std::size_t expected) const;
    [[noreturn]] void throw_type_mismatch(std::size_t c, const char* cpp_name) const;
    [[noreturn]] void throw_null(std::size_t row, std::size_t c, const char* cpp_name) const;
    [[noreturn]] void throw_invalid(std::size_t row, std::size_t c, const char* cpp_name) const;

    /// What decoding a column needs to know: the same for every row, so read once per call of
    /// `as`, `row_as` or `get` rather than once per field.
    struct column_format
    {
        oid type = 0;
        bool binary = false;
    };
    column_format format_of(std::size_t c) const noexcept;
    /// The value at (`row`, `c`): its bytes (see `value`), or null. One call for what would
    /// otherwise take three.
    struct field_view
    {
        std::string_view bytes;
        bool null = false;
    };
    field_view field(std::size_t row, std::size_t c) const noexcept;

    template <class T>
    column_format check_column_type(std::size_t c) const
    {
        using traits = detail::value_traits<T>;
        if (c >= columns())
            throw_count_mismatch(c + 1);
        auto f = format_of(c);
        if (!traits::accepts(f.type))
            throw_type_mismatch(c, traits::cpp_name);
        return f;
    }

    /// The formats of `Row`'s columns, after checking that the result has them.
    template <class Row>
    auto check_shape() const
    {
        if constexpr (detail::column_value<Row>) {
            if (columns() != 1)
                throw_count_mismatch(1);
            return std::array<column_format, 1>{check_column_type<Row>(0)};
        } else {
            static_assert(std::is_aggregate_v<Row>,
                          "pgco: a row type is a single value or a plain aggregate struct");
            constexpr std::size_t n = boost::pfr::tuple_size_v<Row>;
            if (columns() != n)
                throw_count_mismatch(n);
            return [this]<std::size_t... I>(std::index_sequence<I...>)
            {
                return std::array<column_format, n>{
                    check_column_type<boost::pfr::tuple_element_t<I, Row>>(I)...};
            }
            (std::make_index_sequence<n>{});
        }
    }

    template <class T>
    T decode_field(std::size_t row, std::size_t c, column_format f) const
    {
        auto v = field(row, c);
        if constexpr (detail::is_optional<T>::value) {
            if (v.null)
                return std::nullopt;
            return decode_value<typename T::value_type>(v.bytes, row, c, f);
        } else {
            if (v.null)
                throw_null(row, c, detail::value_traits<T>::cpp_name);
            return decode_value<T>(v.bytes, row, c, f);
        }
    }

    template <class T>
    T decode_value(std::string_view bytes, std::size_t row, std::size_t c, column_format f) const
    {
        using traits = detail::value_traits<T>;
        T out{};
        if (!(f.binary ? traits::decode_binary(bytes, f.type, out) : traits::decode(bytes, out)))
            throw_invalid(row, c, traits::cpp_name);
        return out;
    }

    template <class Row, std::size_t N>
    Row decode_row(std::size_t r, const std::array<column_format, N>& formats) const
    {
        if constexpr (detail::column_value<Row>) {
            return decode_field<Row>(r, 0, formats[0]);
        } else {
            Row row{};
            boost::pfr::for_each_field(row, [&](auto& field, std::size_t c) {
                field = decode_field<std::remove_cvref_t<decltype(field)>>(r, c, formats[c]);
            });
            return row;
        }
    }

    struct deleter
    {
        void operator()(pg_result* r) const noexcept;
        void operator()(detail::wire_rows* r) const noexcept;
    };
    // One of them, or neither for an empty result.
    std::unique_ptr<pg_result, deleter> res_;
    std::unique_ptr<detail::wire_rows, deleter> wire_;
};

namespace detail {

/// True if rows of `Row` may be read from a binary result whose columns have `types`: the
/// column count matches and every field reads its column exactly as from text (see
/// `binary_exact`). False where decoding would fail anyway; the text path reports it.
template <class Row>
bool binary_row_safe(const oid* types, std::size_t n) noexcept
{
    if constexpr (column_value<Row>) {
        return n == 1 && binary_exact<Row>(types[0]);
    } else {
        constexpr std::size_t fields = boost::pfr::tuple_size_v<Row>;
        if (n != fields)
            return false;
        return [types]<std::size_t... I>(std::index_sequence<I...>)
        {
            return (binary_exact<boost::pfr::tuple_element_t<I, Row>>(types[I]) && ...);
        }
        (std::make_index_sequence<fields>{});
    }
}

} // namespace detail

} // namespace pgco
