// A program outside pgco's build: it is compiled against an installed pgco (find_package or
// pkg-config) or pgco's sources (add_subdirectory) by the packaging tests, connects through a
// pool to DATABASE_URL, runs one typed query and prints its row.

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

namespace asio = boost::asio;

struct answer
{
    std::int64_t number;
    std::string text;
};

int main()
{
    asio::io_context io;
    pgco::pool db(io.get_executor(), pgco::pool_options::from_env("DATABASE_URL"));
    int status = 1;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto rows =
                co_await db.query<answer>("SELECT $1::int8 * 2, 'from ' || $2", 21, "consumer");
            for (const answer& a : rows)
                std::printf("pgco consumer: %lld %s\n", static_cast<long long>(a.number),
                            a.text.c_str());
            status = rows.size() == 1 ? 0 : 1;
            co_await db.close();
        },
        [&](std::exception_ptr e) {
            if (!e)
                return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                std::fprintf(stderr, "error: %s\n", ex.what());
            }
        });
    io.run();
    return status;
}
