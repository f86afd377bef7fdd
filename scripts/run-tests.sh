#!/usr/bin/env bash
# run-tests.sh [CARGO TEST ARGS...]: `make test`'s test run.
#
# Runs `cargo test --workspace --no-fail-fast` with /run replaced by an empty tmpfs in a
# private mount namespace, so that no test can lean on what this machine's /run happens to
# hold (/run/netns, runtime state dirs, sockets of other tools): a fresh machine has none of
# it. The machine's own /run is never touched. Then it runs the daemon-level suites
# (ROUTED_SUITES) a second time with NH_TEST_DATAPATH=routed: the test daemons run the
# routed datapath (the first run is the default, bridge). Then it prints one summary of
# every test binary of both runs: "tests: N passed, N failed, N skipped" (a binary that
# died without its own summary counts as one failure and is named).
# ROUTED_SUITES="" skips the second run (e.g. when CARGO TEST ARGS select other tests).
set -euo pipefail
CARGO="${CARGO:-cargo}"
log="$(mktemp /tmp/nh-test-log.XXXXXX)"
trap 'rm -f "$log"' EXIT

empty_run=(unshare --mount --propagation private -- sh -c \
    'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && mkdir -p /run/lock && exec "$@"' sh)
if [ "$(id -u)" != 0 ]; then
    echo "*** not root: running without the empty /run (and the privileged tests skip) ***" >&2
    empty_run=()
fi

status=0
"${empty_run[@]}" "$CARGO" test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" \
    || status=$?

# The suites that drive real daemons through nh_tests::node, whose helpers honour
# NH_TEST_DATAPATH; the unit, API and parser tests do not depend on the datapath.
ROUTED_SUITES="${ROUTED_SUITES-daemon egress two_nodes hostports attached_ended metrics nri nri_replay oci_hook cni cni_replay neighbour chaos cluster}"
if [ -n "$ROUTED_SUITES" ]; then
    routed_args=()
    for suite in $ROUTED_SUITES; do routed_args+=(--test "$suite"); done
    echo
    echo "=== the daemon-level suites again on the routed datapath (NH_TEST_DATAPATH=routed) ==="
    # --workspace, not -p nh-tests: the same feature set as the first run, so nothing is
    # rebuilt (with -p, feature unification differs and netns-holder and nh-tests rebuild).
    NH_TEST_DATAPATH=routed "${empty_run[@]}" "$CARGO" test --workspace --locked --no-fail-fast \
        "${routed_args[@]}" 2>&1 | tee -a "$log" || status=$?
fi

# "test result: ok. 12 passed; 0 failed; 3 ignored; ..." once per test binary; a binary that
# crashed prints no such line, and cargo names it in "error: test failed, to rerun pass ...".
awk -v status="$status" '
    /^test result: / {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed;?$/) passed += $i
            if ($(i + 1) ~ /^failed;?$/) failed += $i
            if ($(i + 1) ~ /^ignored;?$/) ignored += $i
        }
        results++
    }
    /^ +(Running|Doc-tests) / { binaries++ }
    /SKIPPED/ { skipped_loudly++ }
    # cargo --no-fail-fast closes with "error: N target(s) failed:" and one line per target.
    /^error: [0-9]+ targets? failed:/ { in_failed = 1; next }
    in_failed && /^    / { failing_binaries = failing_binaries "\n  " $0; next }
    { in_failed = 0 }
    END {
        crashed = binaries - results
        if (crashed < 0) crashed = 0
        print ""
        print "test binaries run: " binaries ", with a summary: " results
        if (failing_binaries != "") print "failing test binaries:" failing_binaries
        if (skipped_loudly > 0) print "SKIPPED lines printed: " skipped_loudly " (see above)"
        if (crashed > 0) print crashed " test binaries died without a summary (counted as failed)"
        printf "tests: %d passed, %d failed, %d skipped\n", passed, failed + crashed, ignored
    }' "$log"
exit "$status"
