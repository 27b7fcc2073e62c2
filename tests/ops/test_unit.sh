#!/usr/bin/env bash
# test_unit.sh BROKER UNIT — the shipped kim-broker.service: `systemd-analyze
# verify` finds no error (with ExecStart pointing at the built broker, as the
# package's /usr/bin/kim-broker is not installed here), and `systemd-analyze
# security` rates it at least OK. Prints the score (docs/operations.md has it).
# Skipped (77) where systemd-analyze is missing.
set -u
broker_bin=$1 unit=$2
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
grep -q '^ExecStart=/usr/bin/kim-broker ' "$unit" || fail "unexpected ExecStart in $unit"
sed "s|/usr/bin/kim-broker|$broker_bin|g" "$unit" >"$work/kim-broker.service"
# the hardening the unit promises
for line in Type=notify 'ExecReload=/bin/kill -HUP $MAINPID' ProtectSystem=strict \
            NoNewPrivileges=yes PrivateTmp=yes 'ReadWritePaths=/var/lib/kim' \
            'CapabilityBoundingSet=' User=kim WatchdogSec=30s; do
    grep -qxF -- "$line" "$work/kim-broker.service" || fail "the unit lacks '$line'"
done
[ "$(grep -c '^ReadWritePaths=' "$work/kim-broker.service")" -eq 1 ] || fail "more ReadWritePaths"
# --man=no: the man pages are installed by the package, not here
out=$(cd "$work" && systemd-analyze verify --man=no ./kim-broker.service 2>&1) \
    || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
out=$(cd "$work" && systemd-analyze security --offline=true ./kim-broker.service 2>&1) \
    || fail "systemd-analyze security: $out"
score=$(sed -n 's/.*Overall exposure level for kim-broker.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' <<<"$out")
[ -n "$score" ] || fail "no overall exposure level: $out"
case ${score#* } in
    PERFECT|SAFE|OK) ;;
    *) fail "systemd-analyze security rates the unit $score (at least OK wanted): $out" ;;
esac
printf 'test_unit: verify clean; systemd-analyze security: %s\n' "$score"
