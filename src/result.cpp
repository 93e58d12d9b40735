#include <pgco/result.hpp>
#include <pgco/types.hpp>

#include "wire_rows.hpp"

#include <libpq-fe.h>

#include <charconv>
#include <string>

namespace pgco {

std::string type_name(oid type)
{
    switch (type) {
    case oids::bool_:
        return "boolean";
    case oids::bytea:
        return "bytea";
    case oids::char_:
        return "\"char\"";
    case oids::name:
        return "name";
    case oids::int8:
        return "bigint";
    case oids::int2:
        return "smallint";
    case oids::int4:
        return "integer";
    case oids::text:
        return "text";
    case oids::oid_:
        return "oid";
    case oids::json:
        return "json";
    case oids::float4:
        return "real";
    case oids::float8:
        return "double precision";
    case oids::unknown:
        return "unknown";
    case oids::bpchar:
        return "character";
    case oids::varchar:
        return "character varying";
    case oids::date:
        return "date";
    case oids::timestamp:
        return "timestamp";
    case oids::timestamptz:
        return "timestamp with time zone";
    case oids::numeric:
        return "numeric";
    case oids::uuid:
        return "uuid";
    case oids::jsonb:
        return "jsonb";
    default:
        return "type " + std::to_string(type);
    }
}

std::string to_string(const uuid& u)
{
    std::string out;
    detail::append_uuid(out, u.octets.data());
    return out;
}

void result::deleter::operator()(pg_result* r) const noexcept
{
    PQclear(r);
}

void result::deleter::operator()(detail::wire_rows* r) const noexcept
{
    detail::wire_rows::destroy(r);
}

// Each accessor answers for a result read off the wire as libpq's would for the same answer,
// out-of-range indexes included.

std::size_t result::size() const noexcept
{
    if (wire_)
        return wire_->rows;
    return res_ ? static_cast<std::size_t>(PQntuples(res_.get())) : 0;
}

std::size_t result::columns() const noexcept
{
    if (wire_)
        return wire_->columns;
    return res_ ? static_cast<std::size_t>(PQnfields(res_.get())) : 0;
}

std::string_view result::column_name(std::size_t c) const noexcept
{
    if (wire_)
        return c < wire_->columns ? std::string_view(wire_->shape->names[c]) : std::string_view();
    const char* n = res_ ? PQfname(res_.get(), static_cast<int>(c)) : nullptr;
    return n ? std::string_view(n) : std::string_view();
}

oid result::column_type(std::size_t c) const noexcept
{
    if (wire_)
        return c < wire_->columns ? wire_->shape->types[c] : 0;
    return res_ ? PQftype(res_.get(), static_cast<int>(c)) : 0;
}

bool result::is_null(std::size_t row, std::size_t c) const noexcept
{
    if (wire_)
        return wire_->at(row, c) == nullptr;
    return PQgetisnull(res_.get(), static_cast<int>(row), static_cast<int>(c)) != 0;
}

bool result::is_binary(std::size_t c) const noexcept
{
    if (wire_)
        return c < wire_->columns && wire_->binary;
    return res_ && PQfformat(res_.get(), static_cast<int>(c)) == 1;
}

result::column_format result::format_of(std::size_t c) const noexcept
{
    if (wire_)
        return {column_type(c), is_binary(c)};
    if (!res_)
        return {};
    auto col = static_cast<int>(c);
    return {PQftype(res_.get(), col), PQfformat(res_.get(), col) == 1};
}

result::field_view result::field(std::size_t row, std::size_t c) const noexcept
{
    if (wire_) {
        const auto* v = wire_->at(row, c);
        if (!v)
            return {{}, true};
        return {{wire_->bytes + v->offset, static_cast<std::size_t>(v->length)}, false};
    }
    auto r = static_cast<int>(row);
    auto col = static_cast<int>(c);
    if (PQgetisnull(res_.get(), r, col))
        return {{}, true};
    return {
        {PQgetvalue(res_.get(), r, col), static_cast<std::size_t>(PQgetlength(res_.get(), r, col))},
        false};
}

std::string_view result::value(std::size_t row, std::size_t c) const noexcept
{
    if (wire_) {
        if (const auto* v = wire_->at(row, c))
            return {wire_->bytes + v->offset, static_cast<std::size_t>(v->length)};
        // libpq: "" for NULL, a null pointer out of range
        return row < wire_->rows && c < wire_->columns ? std::string_view("") : std::string_view();
    }
    auto r = static_cast<int>(row);
    auto col = static_cast<int>(c);
    return {PQgetvalue(res_.get(), r, col),
            static_cast<std::size_t>(PQgetlength(res_.get(), r, col))};
}

namespace {

// The row count in a command tag, as PQcmdTuples reads it: "INSERT 0 5", "UPDATE 5", ...
std::string_view tag_rows(std::string_view tag) noexcept
{
    if (tag.starts_with("INSERT ")) {
        auto space = tag.find(' ', 7); // after the OID
        return space == std::string_view::npos ? std::string_view() : tag.substr(space + 1);
    }
    for (std::string_view verb :
         {"DELETE ", "UPDATE ", "SELECT ", "MOVE ", "FETCH ", "COPY ", "MERGE "})
        if (tag.starts_with(verb))
            return tag.substr(verb.size());
    return {};
}

} // namespace

std::uint64_t result::rows_affected() const noexcept
{
    std::string_view tuples = wire_  ? tag_rows(wire_->tag)
                              : res_ ? std::string_view(PQcmdTuples(res_.get()))
                                     : std::string_view();
    std::uint64_t n = 0;
    std::from_chars(tuples.data(), tuples.data() + tuples.size(), n);
    return n;
}

std::string_view result::command_status() const noexcept
{
    const char* status = wire_ ? wire_->tag : res_ ? PQcmdStatus(res_.get()) : nullptr;
    return status ? std::string_view(status) : std::string_view();
}

namespace {

std::string describe_column(const result& r, std::size_t c)
{
    return "column " + std::to_string(c + 1) + " ('" + std::string(r.column_name(c)) + "')";
}

} // namespace

void result::throw_count_mismatch(std::size_t expected) const
{
    std::string names;
    for (std::size_t c = 0; c < columns(); ++c)
        names += (c ? ", " : "") + std::string(column_name(c));
    throw error(errc::column_count_mismatch,
                "the result has " + std::to_string(columns()) + " column(s) (" + names +
                    ") but the row type expects " + std::to_string(expected));
}

void result::throw_type_mismatch(std::size_t c, const char* cpp_name) const
{
    throw error(errc::type_mismatch, describe_column(*this, c) + " has type " +
                                         type_name(column_type(c)) + ", which cannot be read as " +
                                         cpp_name);
}

void result::throw_null(std::size_t row, std::size_t c, const char* cpp_name) const
{
    throw error(errc::unexpected_null, describe_column(*this, c) + " is NULL in row " +
                                           std::to_string(row + 1) + "; read it as std::optional<" +
                                           cpp_name + "> instead of " + cpp_name);
}

void result::throw_invalid(std::size_t row, std::size_t c, const char* cpp_name) const
{
    auto text = value(row, c);
    std::string shown;
    if (is_binary(c)) {
        // Binary bytes are shown in hex; they may be unprintable.
        static constexpr char hex[] = "0123456789abcdef";
        shown = "binary 0x";
        for (unsigned char ch : text.substr(0, 32)) {
            shown += hex[ch >> 4];
            shown += hex[ch & 0xf];
        }
        if (text.size() > 32)
            shown += "...";
    } else {
        shown = "'" + std::string(text.substr(0, 64)) + (text.size() > 64 ? "...'" : "'");
    }
    throw error(errc::invalid_value, describe_column(*this, c) + " in row " +
                                         std::to_string(row + 1) + ": cannot read " + shown + " (" +
                                         type_name(column_type(c)) + ") as " + cpp_name);
}

} // namespace pgco
