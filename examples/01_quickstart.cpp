// pgco in one page: connect, create a table, insert with bound parameters, read typed rows.
//
//   DATABASE_URL=postgresql://user:password@localhost:5432/db ./pgco_example_01_quickstart
//
// (`scripts/demo` starts a throwaway server and sets DATABASE_URL when it is unset.)

#include <pgco/pgco.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

namespace asio = boost::asio;

/// One row of `products`: fields map to columns by position.
struct product
{
    std::int64_t id;
    std::string name;
    double price;
    std::optional<std::string> note; // NULL-able column
};

asio::awaitable<void> demo()
{
    auto options = pgco::pool_options::from_env("DATABASE_URL");
    pgco::connection db(co_await asio::this_coro::executor);
    co_await db.connect(options);

    co_await db.execute("DROP TABLE IF EXISTS products");
    co_await db.execute("CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL, "
                        "price float8 NOT NULL, note text)");
    for (auto [name, price] : {std::pair{"widget", 2.5}, {"gadget", 10.0}, {"gizmo", 7.25}})
        co_await db.execute("INSERT INTO products (name, price) VALUES ($1, $2)", name, price);
    co_await db.execute("UPDATE products SET note = $1 WHERE name = $2", "best seller", "widget");

    auto rows = co_await db.query<product>(
        "SELECT id, name, price, note FROM products WHERE price < $1 ORDER BY id", 100.0);
    for (const auto& p : rows)
        std::printf("%lld  %-8s %6.2f  %s\n", static_cast<long long>(p.id), p.name.c_str(), p.price,
                    p.note.value_or("-").c_str());

    auto total = co_await db.query_one<double>("SELECT sum(price) FROM products");
    std::printf("%zu products, total price %.2f\n", rows.size(), total);
}

int main()
{
    asio::io_context io;
    int status = 0;
    asio::co_spawn(io, demo(), [&](std::exception_ptr e) {
        if (!e)
            return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            std::fprintf(stderr, "error: %s\n", ex.what());
            status = 1;
        }
    });
    io.run();
    return status;
}
