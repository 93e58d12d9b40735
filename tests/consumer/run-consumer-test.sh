#!/usr/bin/env bash
# The packaging tests (ctest -L packaging), one step per call:
#   run-consumer-test.sh install|find_package|pkg_config|add_subdirectory
# Environment (set by tests/CMakeLists.txt): PGCO_BUILD_DIR (the pgco build tree), PGCO_WORK
# (scratch folder; the install prefix is $PGCO_WORK/prefix), PGCO_CONFIG, CMAKE_GENERATOR, CXX,
# PGCO_SANDBOX_STATE (the test server, read by scripts/with-test-url).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
step=${1:?usage: run-consumer-test.sh install|find_package|pkg_config|add_subdirectory}
build=${PGCO_BUILD_DIR:?} work=${PGCO_WORK:?}
prefix=$work/prefix
cxx=${CXX:-c++}
jobs=${PGCO_JOBS:-2}

run_app() { # run_app BINARY: runs it against the sandbox server and checks its line
    local out
    out=$("$root/scripts/with-test-url" "$1")
    echo "$out"
    grep -q '^pgco consumer: 42 from consumer$' <<<"$out" || {
        echo "FAIL: $1 did not print its row" >&2
        exit 1
    }
}

configure() { # configure SOURCE BINARY ARGS...
    local src=$1 bin=$2
    shift 2
    rm -rf "$bin"
    cmake -S "$src" -B "$bin" ${CMAKE_GENERATOR:+-G "$CMAKE_GENERATOR"} \
        -DCMAKE_CXX_COMPILER="$cxx" "$@"
}

case $step in
install)
    rm -rf "$prefix"
    cmake --install "$build" --prefix "$prefix" ${PGCO_CONFIG:+--config "$PGCO_CONFIG"}
    cmakedir=$(dirname "$(find "$prefix" -name pgcoConfig.cmake)")
    for f in "$prefix/include/pgco/pgco.hpp" "$prefix/include/pgco/detail/value_traits.hpp" \
        "$cmakedir/pgcoConfigVersion.cmake" "$cmakedir/pgcoTargets.cmake"; do
        [ -f "$f" ] || {
            echo "FAIL: $f not installed" >&2
            exit 1
        }
    done
    find "$prefix" -name 'libpgco.*' | grep -q . || {
        echo "FAIL: no libpgco installed" >&2
        exit 1
    }
    find "$prefix" -name pgco.pc | grep -q . || {
        echo "FAIL: no pgco.pc installed" >&2
        exit 1
    }
    # Build-only settings must stay out of what consumers get.
    if grep -nE 'fsanitize|cmake_pch|PRECOMPILE|-Wall|BUILD_INTERFACE' "$cmakedir"/pgcoTargets*.cmake ||
        grep -nF "$root" "$cmakedir"/pgcoTargets*.cmake; then
        echo "FAIL: build settings leaked into the installed interface" >&2
        exit 1
    fi
    find "$prefix" -type f | sed "s|^$prefix/||" | sort
    ;;
find_package)
    configure "$here" "$work/find_package" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_PREFER_CONFIG=ON
    cmake --build "$work/find_package" -j "$jobs"
    run_app "$work/find_package/app"
    ;;
pkg_config)
    pcdir=$(dirname "$(find "$prefix" -name pgco.pc)")
    flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs pgco)
    echo "pkg-config --cflags --libs pgco: $flags"
    mkdir -p "$work/pkg_config"
    # shellcheck disable=SC2086 # flags are words
    (set -x && "$cxx" -std=c++20 "$here/main.cpp" -o "$work/pkg_config/app" $flags)
    run_app "$work/pkg_config/app"
    ;;
add_subdirectory)
    configure "$root/tests/consumer_subdir" "$work/subdir"
    # pgco is not the top-level project there: its tests, examples and benchmarks stay off.
    off=$(grep -cE '^PGCO_BUILD_(TESTS|EXAMPLES|BENCHMARKS):BOOL=OFF$' "$work/subdir/CMakeCache.txt" || true)
    [ "$off" -eq 3 ] || {
        echo "FAIL: pgco's tests/examples/benchmarks are not off under add_subdirectory" >&2
        exit 1
    }
    cmake --build "$work/subdir" -j "$jobs" --target app
    run_app "$work/subdir/app"
    ;;
*)
    echo "run-consumer-test.sh: unknown step $step" >&2
    exit 2
    ;;
esac
