#pragma once

#include <string_view>

namespace pgco::detail {

/// True for statements worth preparing and safe to share a pipeline with others: plain
/// SELECT / INSERT / UPDATE / DELETE / WITH / VALUES / TABLE, after any blanks, opening
/// parentheses and comments (`--` to the end of the line, `/* */` nested as PostgreSQL nests
/// them). Transaction control, SET, utility commands (VACUUM...) run alone, unnamed.
bool shareable_statement(std::string_view sql) noexcept;

} // namespace pgco::detail
