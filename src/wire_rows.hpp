#pragma once

// The result of a statement whose answer pgco read off the wire itself (see wire.hpp), held in
// one block of memory that a pgco::result owns. Internal: not installed.
//
// Why not a libpq PGresult: building one through libpq's public API (PQmakeEmptyPGresult,
// PQsetResultAttrs, PQsetvalue) took about 800 instructions and three allocations per
// statement, and freeing it with PQclear another 370: a quarter of the client's whole work for
// a sequential `SELECT 1` (callgrind). Here a result is one allocation, and the column names
// and types are shared with the prepared statement. Values are copied twice: as rows arrive,
// from the receive buffer into buffers the connection reuses (a statement's rows may span many
// reads), and at its completion into the block.

#include <pgco/types.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgco::detail {

/// A prepared statement's result columns as Describe reported them. Shared by the statement's
/// cache entry and every result read for it, which may outlive the entry.
struct wire_shape
{
    std::vector<std::string> names;
    std::vector<oid> types;
};

/// Rows, values and command tag of one statement. Laid out in a single block: this header,
/// then `rows * columns` cells, then the values' bytes (each followed by a NUL, as libpq's
/// values are), then the tag.
struct wire_rows
{
    /// Where a value is among the bytes; `length` -1 for NULL.
    struct cell
    {
        std::uint32_t offset;
        std::int32_t length;
    };

    std::shared_ptr<const wire_shape> shape;
    std::uint32_t rows = 0;
    std::uint32_t columns = 0;
    bool binary = false;  // every column in binary format (else text)
    const char* tag = ""; // the command tag, NUL-terminated
    const cell* cells = nullptr;
    const char* bytes = nullptr;

    /// The value at (`row`, `c`), or nullptr if it is NULL or out of range.
    const cell* at(std::size_t row, std::size_t c) const noexcept
    {
        if (row >= rows || c >= columns)
            return nullptr;
        const cell* v = cells + row * columns + c;
        return v->length < 0 ? nullptr : v;
    }

    /// A block holding copies of `cells` (`rows` rows of `shape`'s columns), of `bytes` they
    /// point into and of `tag`; nullptr if memory is short.
    static wire_rows* make(std::shared_ptr<const wire_shape> shape, bool binary, std::uint32_t rows,
                           std::span<const cell> cells, std::string_view bytes,
                           std::string_view tag) noexcept
    {
        static_assert(sizeof(wire_rows) % alignof(cell) == 0);
        std::size_t size = sizeof(wire_rows) + cells.size_bytes() + bytes.size() + tag.size() + 1;
        void* block = ::operator new(size, std::nothrow);
        if (!block)
            return nullptr;
        auto* r = new (block) wire_rows;
        r->columns = shape ? static_cast<std::uint32_t>(shape->types.size()) : 0;
        r->shape = std::move(shape);
        r->rows = rows;
        r->binary = binary;
        auto* cell_copy = reinterpret_cast<cell*>(r + 1);
        if (!cells.empty())
            std::memcpy(cell_copy, cells.data(), cells.size_bytes());
        char* byte_copy = reinterpret_cast<char*>(cell_copy + cells.size());
        if (!bytes.empty())
            std::memcpy(byte_copy, bytes.data(), bytes.size());
        char* tag_copy = byte_copy + bytes.size();
        if (!tag.empty())
            std::memcpy(tag_copy, tag.data(), tag.size());
        tag_copy[tag.size()] = '\0';
        r->cells = cell_copy;
        r->bytes = byte_copy;
        r->tag = tag_copy;
        return r;
    }

    static void destroy(wire_rows* r) noexcept
    {
        r->~wire_rows();
        ::operator delete(static_cast<void*>(r), std::nothrow);
    }
};

} // namespace pgco::detail
