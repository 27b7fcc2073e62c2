#!/usr/bin/env bash
# test_tools.sh KIM POLICY — the kim tool's offline commands, as a user runs
# them: policy lint and check against the shipped policy (each answer must
# name the rule and the law), keygen's files and their modes, help and
# usage errors with their exit codes.
set -u
kim=$1
policy=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
checks=0
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
expect() {      # expect EXIT_CODE PATTERN -- command...
    local code=$1 pattern=$2; shift 3
    local out rc
    out=$("$@" 2>&1); rc=$?
    [ "$rc" -eq "$code" ] || fail "$* exited $rc, expected $code: $out"
    grep -qE -- "$pattern" <<<"$out" || fail "$* did not print /$pattern/: $out"
    checks=$((checks + 1))
}

# policy lint: the shipped policy is valid; a broken one is named by line and key
expect 0 'OK: [0-9]+ rules, default deny' -- "$kim" policy lint "$policy"
printf 'rules\n    P1\n        decision = alow\n' >"$work/bad.cfg"
expect 1 'bad.cfg:3: rules/P1/decision' -- "$kim" policy lint "$work/bad.cfg"
expect 1 'cannot open|No such file' -- "$kim" policy lint "$work/missing.cfg"

# policy check: decisions with their rule and law
expect 1 '"rule":"P5".*AufenthG' -- "$kim" policy check --policy "$policy" \
    --from sch.rheine --to aba.rheine --purpose residence --statute "AufenthG §87(1)"
expect 0 '"decision":"allow".*"rule":"P1".*SGB X' -- "$kim" policy check --policy "$policy" \
    --from jc.rheine --to soz.rheine --purpose benefits --statute "SGB X §69(1)1"
expect 1 '"rule":"P8".*"code":"NO_BASIS"|"code":"NO_BASIS".*"rule":"P8"' -- \
    "$kim" policy check --policy "$policy" \
    --from kim.rheine --to jc.rheine --purpose employment --statute "SGB X §69(1)1"
expect 0 '"decision":"allow".*"rule":"P8"' -- "$kim" policy check --policy "$policy" \
    --from kim.rheine --to jc.rheine --purpose employment --consent G-1 --assume-consent
expect 1 '"decision":"deny"' -- "$kim" policy check --policy "$policy" \
    --from kim.rheine --to ki.steinfurt --purpose reporting --consent G-1 --assume-consent

# keygen: a public file, a private secret file, no silent overwrite
expect 0 '"public_key":"' -- "$kim" keygen jc.test --dir "$work/keys"
[ "$(stat -c %a "$work/keys/jc.test.cert_secret")" = 600 ] || fail "secret file is not mode 600"
[ -s "$work/keys/jc.test.cert" ] || fail "no public certificate written"
expect 2 'exists|--force' -- "$kim" keygen jc.test --dir "$work/keys"
expect 0 '"public_key":"' -- "$kim" keygen jc.test --dir "$work/keys" --force

# help and usage errors
expect 0 'send.*inbox|inbox' -- "$kim" --help
for command in send inbox status keygen admin audit referral policy subject; do
    expect 0 "Usage: kim $command" -- "$kim" "$command" --help
done
expect 2 'unknown|usage' -- "$kim" no-such-command
expect 2 'unknown option|--bogus' -- "$kim" status --bogus
expect 2 'cert' -- env -u KIM_CERT "$kim" status

printf 'test_tools: %d checks passed\n' "$checks"
