#!/usr/bin/env bash
# test_tools.sh KIM POLICY BROKER — the kim tool as a user runs it. Offline:
# policy lint and check against the shipped policy (each answer must name the
# rule and the law), keygen's files and their modes, help and usage errors
# with their exit codes; kim-broker --check on a good and on bad files.
# Online, against a real kim-broker this script starts on an ipc:// endpoint
# in its own folder: subscribe, unsubscribe, directory.
set -u
kim=$1
policy=$2
broker_bin=$3
work=$(mktemp -d)
broker_pid=
trap '[ -z "$broker_pid" ] || { kill "$broker_pid"; wait "$broker_pid"; } 2>/dev/null
      rm -rf "$work"' EXIT
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
# an allowance explained names its rule in its text too (the broker's own
# checks skip that text: nobody reads it there)
expect 0 '"text":"rule P1 \(' -- "$kim" policy check --policy "$policy" \
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
for command in send inbox status keygen admin audit referral policy subject subscribe \
               unsubscribe directory; do
    expect 0 "Usage: kim $command" -- "$kim" "$command" --help
done
expect 2 'unknown|usage' -- "$kim" no-such-command
expect 2 'unknown option|--bogus' -- "$kim" status --bogus
expect 2 'cert' -- env -u KIM_CERT "$kim" status
expect 2 "--types: 'OUTCOM' is not a message type" -- "$kim" subscribe --types ACCEPT,OUTCOM
expect 2 '--types: ACCEPT is named twice' -- "$kim" subscribe --types ACCEPT --types accept
expect 2 "'bad id' is not a subscription id" -- "$kim" unsubscribe 'bad id'
expect 2 'which SUB_ID' -- "$kim" unsubscribe
expect 2 "'nobody' is not an organisation id" -- "$kim" directory nobody

# --- online: a broker with the shipped policy ----------------------------------
# Three agencies (aa.rheine also registers a signing key) and an auditor.
keys=$work/broker-keys
data=$work/data
mkdir -p "$data"
pubkey() { sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$1"; }
{
    printf 'broker\n    name = kim.test\n    data = "%s"\n    bind = "ipc://%s/kim.sock"\n' \
        "$data" "$work"
    # relative to the config's folder otherwise
    printf 'policy\n    file = "%s/%s"\n' "$(cd "$(dirname "$policy")" && pwd)" "$(basename "$policy")"
    printf 'orgs\n'
    for entry in jc.rheine:1:agency soz.rheine:1:agency aa.rheine:1:agency \
                 dsb.steinfurt:1:auditor; do
        IFS=: read -r id public role <<<"$entry"
        "$kim" keygen "$id" --dir "$keys" >/dev/null || fail "keygen $id"
        printf '    %s\n        name = "Test %s"\n        public_body = %s\n' "$id" "$id" "$public"
        printf '        role = %s\n        public_key = "%s"\n' "$role" "$(pubkey "$keys/$id.cert")"
        if [ "$id" = aa.rheine ]; then
            "$kim" keygen "$id" --dir "$keys" --sign >/dev/null || fail "keygen --sign $id"
            printf '        sign_key = "%s"\n' "$(pubkey "$keys/$id.sign")"
        fi
    done
} >"$work/kim.cfg"

# kim-broker --check: the file as written passes; a bad key in any module's
# section is named, before anything is opened
expect 0 'configuration OK: broker kim.test' -- "$broker_bin" --check --config "$work/kim.cfg"
{ cat "$work/kim.cfg"; printf 'lifecycle\n    deadline_days = 0\n'; } >"$work/bad-lc.cfg"
expect 2 'lifecycle/deadline_days' -- "$broker_bin" --check --config "$work/bad-lc.cfg"
{ cat "$work/kim.cfg"; printf 'audit\n    checkpoint_recods = 10\n'; } >"$work/bad-audit.cfg"
expect 2 'audit/checkpoint_recods: unknown key' -- \
    "$broker_bin" --check --config "$work/bad-audit.cfg"

"$broker_bin" --config "$work/kim.cfg" >"$work/broker.log" 2>&1 &
broker_pid=$!
export KIM_ENDPOINT="ipc://$work/kim.sock" KIM_BROKER_KEY="$data/keys/broker.cert"
unset KIM_CERT
as() { local org=$1; shift; "$kim" "$@" --cert "$keys/$org.cert_secret"; }
# Poll until the broker answers (it makes its key pair on first start).
deadline=$((SECONDS + 30))
until [ -f "$KIM_BROKER_KEY" ] && as jc.rheine status --timeout 500 >/dev/null 2>&1; do
    kill -0 "$broker_pid" 2>/dev/null || fail "broker exited: $(tail -5 "$work/broker.log")"
    [ "$SECONDS" -lt "$deadline" ] || fail "broker did not answer within 30 s"
    sleep 0.1
done
# out ORG ARGS...: the command's stdout (stderr to $work/err); $rc its exit status.
out() { local org=$1; shift; got=$(as "$org" "$@" 2>"$work/err"); rc=$?; }
must() {        # must PATTERN WHAT: $got holds PATTERN, else fail
    grep -qE -- "$1" <<<"$got" || fail "$2: no /$1/ in: $got $(cat "$work/err")"
    checks=$((checks + 1))
}
has() {         # has TEXT WHAT: $line holds TEXT (keys are Z85: no regex), else fail
    grep -qF -- "$1" <<<"$line" || fail "$2: no '$1' in: $line"
    checks=$((checks + 1))
}
send() { as "$@" --statute 'SGB X §69(1)1' --purpose benefits --subject p-7f3a \
             >/dev/null 2>"$work/err" || fail "send $*: $(cat "$work/err")"; }

# directory: the agencies with their keys (the auditor is no agency)
out soz.rheine directory
[ "$rc" -eq 0 ] || fail "directory exited $rc: $(cat "$work/err")"
[ "$(wc -l <<<"$got")" -eq 3 ] || fail "directory: expected 3 agencies, got: $got"
for id in jc.rheine soz.rheine aa.rheine; do
    key=$(pubkey "$keys/$id.cert")
    line=$(grep -F "{\"org\":\"$id\"," <<<"$got") || fail "directory does not list $id: $got"
    has "\"name\":\"Test $id\",\"type\":\"${id%%.*}\",\"public_body\":true," "directory $id"
    has "\"public_key\":\"$key\"" "directory $id"
    if [ "$id" = aa.rheine ]; then
        has "\"sign_key\":\"$(pubkey "$keys/$id.sign")\"}" "directory $id"
    else
        grep -q sign_key <<<"$line" && fail "directory: $id has no sign_key, yet: $line"
    fi
done
out jc.rheine directory aa.rheine
[ "$rc" -eq 0 ] && [ "$(wc -l <<<"$got")" -eq 1 ] || fail "directory aa.rheine: rc $rc: $got"
line=$got
has "{\"org\":\"aa.rheine\",\"name\":\"Test aa.rheine\"" 'directory aa.rheine'
has "\"public_key\":\"$(pubkey "$keys/aa.rheine.cert")\"" 'directory aa.rheine'
expect 1 'jc.nowhere is not in the broker.s directory' -- \
    "$kim" directory jc.nowhere --cert "$keys/jc.rheine.cert_secret"

# subscribe: the social office takes part in case C-T (a referral to it) and
# subscribes to the case's REFERRALs and ACCEPTs
send jc.rheine send --type REFERRAL --to soz.rheine --referral R-1 --case C-T
out soz.rheine inbox --idle 500
must '"referral_id":"R-1"' 'soz.rheine reads its referral'
out soz.rheine subscribe --case C-T --types REFERRAL,accept
[ "$rc" -eq 0 ] || fail "subscribe exited $rc: $(cat "$work/err")"
must '^\{"subscribed":"s-C-T","org":"soz.rheine","case":"C-T","types":\["REFERRAL","ACCEPT"\],"seq":[0-9]+\}$' \
    'subscribe'
# Between the job centre and the employment agency, in the same case: the
# referral and its acceptance are events for the social office, the STATUS is not.
send jc.rheine send --type REFERRAL --to aa.rheine --referral R-2 --case C-T \
    --payload - <<<'{"need":"placement"}'
as aa.rheine send --type ACCEPT --to jc.rheine --referral R-2 >/dev/null 2>"$work/err" \
    || fail "ACCEPT R-2: $(cat "$work/err")"
as aa.rheine send --type STATUS --to jc.rheine --referral R-2 --code in_progress \
    >/dev/null 2>"$work/err" || fail "STATUS R-2: $(cat "$work/err")"
out soz.rheine inbox --idle 1000
[ "$rc" -eq 0 ] || fail "inbox exited $rc: $(cat "$work/err")"
[ "$(wc -l <<<"$got")" -eq 2 ] || fail "soz.rheine's events: expected 2 (not the STATUS), got: $got"
line=$(sed -n 1p <<<"$got")
has '"type":"REFERRAL"' 'first event'
has '"sender":"jc.rheine","recipient":"aa.rheine","referral_id":"R-2"' 'first event'
has '"case_id":"C-T"' 'first event'
has '"payload_base64":""' 'first event (the payload is for aa.rheine only)'
line=$(sed -n 2p <<<"$got")
has '"type":"ACCEPT"' 'second event'
has '"sender":"aa.rheine","recipient":"jc.rheine","referral_id":"R-2"' 'second event'

# unsubscribe: no more events (and again: idempotent)
out soz.rheine unsubscribe s-C-T
[ "$rc" -eq 0 ] || fail "unsubscribe exited $rc: $(cat "$work/err")"
must '^\{"unsubscribed":"s-C-T","org":"soz.rheine","seq":[0-9]+\}$' 'unsubscribe'
send jc.rheine send --type REFERRAL --to aa.rheine --referral R-3 --case C-T
out soz.rheine inbox --idle 1000
[ "$rc" -eq 0 ] && [ -z "$got" ] || fail "events after unsubscribe (rc $rc): $got"
expect 0 '"unsubscribed":"s-C-T"' -- "$kim" unsubscribe s-C-T --cert "$keys/soz.rheine.cert_secret"
# the broker's refusal names its code and text, exit 1; the broker still answers
expect 1 'subscription refused: FORBIDDEN \(205\) role auditor' -- \
    "$kim" subscribe --cert "$keys/dsb.steinfurt.cert_secret"
expect 0 '"org":"jc.rheine"' -- "$kim" status --cert "$keys/jc.rheine.cert_secret"

# The broker's log: one logfmt event per line, and nothing of what the
# agencies sent beyond ids (the payload is sealed; its words never appear).
while IFS= read -r entry; do
    grep -qE '^ts=[0-9-]+T[0-9:.]+Z level=(error|warning|notice|info|debug) prog=kim-broker (module=[a-z0-9_]+ )?msg=".*"$' \
        <<<"$entry" || fail "broker log line not logfmt: $entry"
    checks=$((checks + 1))
done <"$work/broker.log"
grep -q 'level=notice prog=kim-broker msg="kim-broker kim.test serving on ' "$work/broker.log" \
    || fail "broker log lacks its start event: $(head -5 "$work/broker.log")"
grep -qiE 'placement|need' "$work/broker.log" && fail "payload words in the broker log"

printf 'test_tools: %d checks passed\n' "$checks"
