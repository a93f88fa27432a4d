#!/usr/bin/env bash
# The MPI part of the test suite (README "Run the tests"): installs Open MPI from Debian's
# packages when it is missing, lints the `mpi` feature and runs crates/cli/tests/mpi.rs,
# which starts `mpirun --allow-run-as-root --oversubscribe -n 1|2` on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/mpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || need+=(libopenmpi-dev)
# bindgen needs libclang itself (libclang.so / libclang-N.so), not libclang-cpp.
{ ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
    /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* 2>/dev/null || true; } | grep -q . || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "test-mpi: installing ${need[*]} (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "test-mpi: $(mpirun --version | head -1)"
cargo clippy -p cryoforge-core -p cryoforge --features mpi --all-targets -- -D warnings
cargo test -p cryoforge --features mpi --test mpi
