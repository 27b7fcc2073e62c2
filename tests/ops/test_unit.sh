#!/usr/bin/env bash
# test_unit.sh BROKER UNIT_DIR AGENT — the shipped units (kim-broker.service,
# kim-backup.service with its timer, and the template kim-agent@.service as
# an office's instance): `systemd-analyze verify` finds no
# error (with the ExecStart paths pointing at the built broker, as the
# package's /usr/bin/kim-broker is not installed here), and `systemd-analyze
# security` rates each service at least OK. Prints the scores
# (docs/operations.md has them). Skipped (77) where systemd-analyze is missing.
set -u
broker_bin=$1 units=$2 agent_bin=$3
unit=$units/kim-broker.service
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
grep -q '^ExecStart=/usr/bin/kim-broker ' "$unit" || fail "unexpected ExecStart in $unit"
for file in kim-broker.service kim-backup.service kim-backup.timer; do
    sed "s|/usr/bin/kim-broker|$broker_bin|g" "$units/$file" >"$work/$file"
done
sed "s|/usr/bin/kim-agent|$agent_bin|g" "$units/kim-agent@.service" >"$work/kim-agent@jc.rheine.service"
for line in 'ExecStart=/usr/bin/kim-agent --config /etc/kim/agents/%i.cfg' ProtectSystem=strict \
            NoNewPrivileges=yes PrivateTmp=yes 'ReadWritePaths=/var/lib/kim-agent/%i' \
            'CapabilityBoundingSet=' User=kim-agent; do
    grep -qxF -- "$line" "$units/kim-agent@.service" || fail "the agent's unit lacks '$line'"
done
# the hardening the unit promises
for line in Type=notify 'ExecReload=/bin/kill -HUP $MAINPID' ProtectSystem=strict \
            NoNewPrivileges=yes PrivateTmp=yes 'ReadWritePaths=/var/lib/kim' \
            'CapabilityBoundingSet=' User=kim WatchdogSec=30s; do
    grep -qxF -- "$line" "$work/kim-broker.service" || fail "the unit lacks '$line'"
done
[ "$(grep -c '^ReadWritePaths=' "$work/kim-broker.service")" -eq 1 ] || fail "more ReadWritePaths"
# --man=no: the man pages are installed by the package, not here
out=$(cd "$work" && systemd-analyze verify --man=no ./kim-broker.service ./kim-backup.service \
      ./kim-backup.timer ./kim-agent@jc.rheine.service 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
grep -qxF 'ReadWritePaths=/var/lib/kim /var/backups/kim' "$work/kim-backup.service" \
    && grep -qxF 'User=kim' "$work/kim-backup.service" || fail "kim-backup.service: user or paths"
scores=
for service in kim-broker.service kim-backup.service kim-agent@jc.rheine.service; do
    out=$(cd "$work" && systemd-analyze security --offline=true "./$service" 2>&1) \
        || fail "systemd-analyze security $service: $out"
    score=$(sed -n "s/.*Overall exposure level for $service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p" <<<"$out")
    [ -n "$score" ] || fail "no overall exposure level for $service: $out"
    case ${score#* } in
        PERFECT|SAFE|OK) ;;
        *) fail "systemd-analyze security rates $service $score (at least OK wanted): $out" ;;
    esac
    scores="$scores $service $score;"
done
printf 'test_unit: verify clean; systemd-analyze security:%s\n' "$scores"
