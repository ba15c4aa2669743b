#!/usr/bin/env bash
# Fuzzes the request key extractors and the strategies' table builders (the cargo-fuzz targets in
# fuzz/), each for a bounded time, and exits non-zero if any target crashed, failed a check or
# hung. Not part of .ci/run: run it by hand, or on a schedule.
#
# Toolchain: this runs on stable Rust. cargo-fuzz asks for nightly only because its default
# sanitizer, AddressSanitizer, needs the unstable `-Zsanitizer` flag. Everything else it passes
# is stable (coverage instrumentation through `-Cpasses=sancov-module` and `-Cllvm-args`,
# `--cfg fuzzing`, debug assertions), and libfuzzer-sys builds libFuzzer with the system C++
# compiler. So:
#   - by default the targets are built with `--sanitizer none`: no unstable flag at all. tower-lb
#     forbids unsafe code, so a memory sanitizer would only watch its dependencies; panics, failed
#     assertions and overflow checks are what the targets look for, and those need none.
#   - `--sanitizer address` (or FUZZ_SANITIZER=address) builds with AddressSanitizer; on a stable
#     toolchain the script then sets RUSTC_BOOTSTRAP=1 so rustc accepts `-Zsanitizer=address`
#     (the stable toolchain ships the ASan runtime). Slower, about a quarter of the executions.
# cargo-fuzz itself is installed with `cargo install cargo-fuzz --locked` if it is missing.
#
# The corpus grows in fuzz/corpus/<target> from run to run; crashing inputs are written to
# fuzz/artifacts/<target>/ and each run's libFuzzer log to fuzz/artifacts/<target>.log (all
# ignored by git). Reproduce a crash with `cargo fuzz run -s none <target> <artifact>` in fuzz/.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/fuzz.sh [--seconds N] [--sanitizer none|address] [TARGET...]

Runs each cargo-fuzz target of fuzz/ (all of them unless named) for a bounded time, on a stable
toolchain, and prints the executions and the outcome of each. Exits 1 if any target crashed, failed
one of its checks or timed out on an input, 2 on a usage error.

Options:
  --seconds N           how long to fuzz each target (default: FUZZ_SECONDS, else 60)
  --sanitizer NAME      none (default: FUZZ_SANITIZER, else none) or address
  --list                list the targets and exit
  -h, --help            show this help

Environment:
  FUZZ_SECONDS          seconds per target (default 60)
  FUZZ_SANITIZER        none or address (default none)
  FUZZ_TIMEOUT          seconds one input may take before it counts as a hang (default 10)
  FUZZ_ARGS             extra libFuzzer arguments, e.g. "-max_len=512"
EOF
}

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
timeout_per_input="${FUZZ_TIMEOUT:-10}"
list_only=false
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --seconds)
            seconds="${2:?--seconds needs a value}"
            shift 2
            ;;
        --sanitizer)
            sanitizer="${2:?--sanitizer needs a value}"
            shift 2
            ;;
        --list)
            list_only=true
            shift
            ;;
        -*)
            echo "fuzz.sh: unknown option $1" >&2
            usage >&2
            exit 2
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: the time per target must be a positive number of seconds, got '$seconds'" >&2
    exit 2
fi
case "$sanitizer" in
    none) ;;
    address) export RUSTC_BOOTSTRAP=1 ;;
    *)
        echo "fuzz.sh: the sanitizer must be none or address, got '$sanitizer'" >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

all_targets=$(cargo fuzz list)
if $list_only; then
    echo "$all_targets"
    exit 0
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets <<<"$all_targets"
fi
for target in "${targets[@]}"; do
    if ! grep -qx "$target" <<<"$all_targets"; then
        echo "fuzz.sh: no target '$target'; the targets are:" $all_targets >&2
        exit 2
    fi
done

echo "== building ${targets[*]} (sanitizer: $sanitizer, $(rustc --version))"
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

mkdir -p artifacts
failed=()
summary=()
for target in "${targets[@]}"; do
    log="artifacts/$target.log"
    echo "== fuzzing $target for ${seconds}s (log: fuzz/$log)"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
    cargo fuzz run --sanitizer "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -timeout="$timeout_per_input" -print_final_stats=1 \
        ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ -z "$runs" ]; then
        runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    fi
    if [ "$status" -eq 0 ]; then
        outcome="ok"
    elif grep -q '^Error: failed to build fuzz script' "$log"; then
        # The sources changed since the build step, and no longer build.
        outcome="BUILD FAILED"
        failed+=("$target")
        grep -E '^(error|warning)' -A 6 "$log" | head -n 40
    else
        outcome="FAILED (exit $status)"
        failed+=("$target")
        echo "-- $target failed; the end of its log:"
        grep -v '^"' "$log" | tail -n 40
    fi
    summary+=("$(printf '%-14s %12s executions %8s exec/s  %s' \
        "$target" "${runs:-?}" "${rate:-?}" "$outcome")")
done

echo "== summary (${seconds}s per target, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashing inputs are in fuzz/artifacts/<target>/: ${failed[*]}" >&2
    exit 1
fi
