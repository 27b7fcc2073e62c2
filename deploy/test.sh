#!/usr/bin/env bash
# deploy/test.sh — install what is missing, build with sanitizers, run the
# whole test suite (unit, integration, fault, fuzz corpus), run it once more
# under ThreadSanitizer, then fuzz each libFuzzer target for a bounded time
# when clang's libFuzzer is available.
#
#   KIM_FUZZ_SECONDS   seconds per fuzz target (default 20; 0 skips fuzzing)
#   KIM_TSAN           0 skips the ThreadSanitizer pass
#   KIM_TEST_REGEX     run only the CTest tests matching this regex
#   KIM_PACKAGE_ROOT   1: the package test also installs into a debootstrap'd
#                      Debian 12 (root, the Debian mirror, about 90 s more)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# systemd-analyze, dpkg-shlibdeps and groff for the operations tests (tests/ops);
# KIM_PACKAGE_ROOT=1 also installs the packages into a debootstrap'd Debian.
kim_install clang systemd dpkg-dev groff-base $([ "${KIM_PACKAGE_ROOT:-0}" = 1 ] && echo debootstrap)
kim_web_test_setup
build="$KIM_ROOT/build/test"
kim_say "building with ASan and UBSan in $build"
kim_build "$build" -DKIM_SANITIZE=ON -DKIM_WERROR=ON

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
kim_say "running the test suite"
ctest_args=(--test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 300)
[ -n "${KIM_TEST_REGEX:-}" ] && ctest_args+=(-R "$KIM_TEST_REGEX")
ctest "${ctest_args[@]}"

# The same tests once more under ThreadSanitizer: the broker's threads (the
# main thread, the helper that decodes, hashes and seals, ZeroMQ's I/O
# thread), the agent's HTTP threads, the tests' own. Then kim-bench's W1
# and REFERRAL-answer cycle, which put more through the broker's helper than
# any test does. The first race stops the program that saw it. libzmq and
# libsodium are not instrumented, and their hand-over of a received frame
# would show as races on every byte read: the sanitizer leaves them alone.
# setarch -R: the sanitizer's fixed memory layout, whatever the kernel's ASLR.
# (ops: the packages and units are the same code; fuzz: single-threaded.)
if [ "${KIM_TSAN:-1}" != 0 ]; then
    tsan="$KIM_ROOT/build/tsan"
    kim_say "building with ThreadSanitizer in $tsan"
    kim_build "$tsan" -DKIM_TSAN=ON -DKIM_WERROR=ON
    reports=$(mktemp -d)
    tsan_run() {
        TSAN_OPTIONS="ignore_noninstrumented_modules=1 halt_on_error=1 log_path=$reports/tsan" \
            KIM_BROKER="$tsan/broker/kim-broker" setarch "$(uname -m)" -R "$@" \
            >"$reports/out" 2>&1 && return 0
        tail -60 "$reports/out"; cat "$reports"/tsan.* 2>/dev/null | head -80
        kim_say "ThreadSanitizer: $(basename "$1") failed"; exit 1
    }
    kim_say "running the tests under ThreadSanitizer"
    # The checks of the documents (man pages, README, guides) run once, under
    # ASan above: they drive no thread path the other tests do not.
    tsan_args=(--test-dir "$tsan" --output-on-failure -j "$(nproc)" --timeout 300
               -L "unit|integration|fault"
               -E "python\.(policy|cli|config_[a-z]+|federation_guide|web_[a-z]+|readme_[a-z]+|pyclient|agent_man|operations)_spec")
    [ -n "${KIM_TEST_REGEX:-}" ] && tsan_args+=(-R "$KIM_TEST_REGEX")
    tsan_run ctest "${tsan_args[@]}"
    grep -E "tests passed" "$reports/out" >&2
    kim_say "kim-bench W1 and --answer against the ThreadSanitizer broker"
    tsan_run "$tsan/tests/bench/kim-bench" --workload W1 --no-ceilings --no-counters \
        --messages 1000
    tsan_run "$tsan/tests/bench/kim-bench" --workload W1 --answer --no-ceilings --no-counters \
        --messages 500
    if ls "$reports"/tsan.* >/dev/null 2>&1; then
        cat "$reports"/tsan.*; kim_say "ThreadSanitizer reported races"; exit 1
    fi
    rm -rf "$reports"
fi

seconds=${KIM_FUZZ_SECONDS:-20}
if [ "$seconds" -gt 0 ] && command -v clang >/dev/null; then
    fuzz="$KIM_ROOT/build/fuzz"
    kim_say "building libFuzzer targets in $fuzz"
    CC=clang kim_build "$fuzz" -DKIM_FUZZ=ON -DKIM_TESTS=ON
    for target in "$fuzz"/tests/fuzz/fuzz_*; do
        [ -x "$target" ] || continue
        name=$(basename "$target")
        corpus="$KIM_ROOT/tests/fuzz/corpus/${name#fuzz_}"
        work=$(mktemp -d)
        kim_say "fuzzing $name for ${seconds}s"
        "$target" -max_total_time="$seconds" -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/" -print_final_stats=1 "$work" "$corpus" \
            2>"$work/log" || { tail -50 "$work/log"; kim_say "$name found a crash"; exit 1; }
        grep -E '^(stat::number_of_executed_units|Done)' "$work/log" | tr '\n' ' ' >&2; echo >&2
        rm -rf "$work"
    done
fi
kim_say "all tests passed"
