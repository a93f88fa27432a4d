# Shared helpers of the peer benchmarks (sourced, not run).
#   bench_python NAME PKG...   sets PY: $CRYOFORGE_BENCH_PYTHON if set, else a throwaway
#                              venv bench/.venv/NAME with PKG... installed from PyPI
#   bench_cryoforge            sets CF: a snapshot of the release binary (built if missing)
#   bench_timed LABEL CMD...   runs CMD under /usr/bin/time -v into $OUT/LABEL.{log,time}
#   time_field FILE KEY        wall_s | rss_mib | cpu_s | cpu_pct from a /usr/bin/time -v file
#   machine_info               one line: CPU model, cores, load average, date

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bench_python() {
    local name=$1
    shift
    if [[ -n "${CRYOFORGE_BENCH_PYTHON:-}" ]]; then
        PY=$CRYOFORGE_BENCH_PYTHON
    else
        local venv="$ROOT/bench/.venv/$name"
        PY="$venv/bin/python"
        if [[ ! -x "$PY" ]] || [[ ! -f "$venv/.installed" ]]; then
            echo "== creating $venv (pip install $*)" >&2
            python3 -m venv "$venv"
            "$PY" -m pip install --quiet --upgrade pip
            "$PY" -m pip install --quiet "$@"
            touch "$venv/.installed"
        fi
    fi
    echo "== python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))" >&2
}

bench_cryoforge() {
    local bin="$ROOT/target/release/cryoforge"
    if [[ -n "${CRYOFORGE_BIN:-}" ]]; then
        bin=$CRYOFORGE_BIN
    elif [[ ! -x "$bin" ]]; then
        echo "== building cryoforge (cargo build --release -p cryoforge)" >&2
        cargo build --release -p cryoforge >&2
    fi
    # A private copy: a concurrent `cargo build` cannot swap the binary mid-benchmark.
    mkdir -p "$ROOT/bench/out/bin"
    # (copy, then rename: a benchmark still running the previous copy keeps its file)
    cp "$bin" "$ROOT/bench/out/bin/cryoforge.$$"
    mv -f "$ROOT/bench/out/bin/cryoforge.$$" "$ROOT/bench/out/bin/cryoforge"
    CF="$ROOT/bench/out/bin/cryoforge"
    echo "== cryoforge: $bin ($("$CF" --version), git $(git -C "$ROOT" rev-parse --short HEAD))" >&2
}

ensure_time() {
    if [[ ! -x /usr/bin/time ]]; then
        echo "== /usr/bin/time missing: apt-get install -y time" >&2
        apt-get install -y time >&2 || { echo "install the Debian 'time' package" >&2; exit 1; }
    fi
}

# bench_timed LABEL CMD... : stdout+stderr to $OUT/LABEL.log, resources to $OUT/LABEL.time
bench_timed() {
    local label=$1
    shift
    echo "== [$label] load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    echo "   \$ $*" >&2
    /usr/bin/time -v -o "$OUT/$label.time" "$@" >"$OUT/$label.log" 2>&1 || {
        echo "!! [$label] failed; tail of $OUT/$label.log:" >&2
        tail -20 "$OUT/$label.log" >&2
        exit 1
    }
    echo "   wall $(time_field "$OUT/$label.time" wall_s) s, peak RSS $(time_field "$OUT/$label.time" rss_mib) MiB," \
        "CPU $(time_field "$OUT/$label.time" cpu_s) s ($(time_field "$OUT/$label.time" cpu_pct))" >&2
}

time_field() {
    awk -v key="$2" -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
        /Maximum resident set size/ { rss = $2 / 1024 }
        /User time/ { u = $2 }
        /System time/ { s = $2 }
        /Percent of CPU/ { pct = $2 }
        END {
            if (key == "wall_s") printf "%.2f", w
            else if (key == "rss_mib") printf "%.0f", rss
            else if (key == "cpu_s") printf "%.1f", u + s
            else if (key == "cpu_pct") print pct
        }' "$1"
}

machine_info() {
    local f=/proc/cpuinfo
    echo "$(grep -m1 'model name' $f | cut -d: -f2 | sed 's/^ //') (family $(grep -m1 'cpu family' $f | cut -d: -f2 | tr -d ' ')" \
        "model $(grep -m1 '^model\s*:' $f | cut -d: -f2 | tr -d ' '), $(grep -m1 'cpu MHz' $f | cut -d: -f2 | tr -d ' ') MHz), $(nproc) cores" \
        "(shared with other users), load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
}
