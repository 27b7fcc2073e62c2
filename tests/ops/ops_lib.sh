# ops_lib.sh — shared by the operations tests: a broker in a temp folder with
# a few organisations under the shipped policy, started and polled until it
# answers. Needs $kim, $broker_bin, $policy and $work set by the caller.
checks=0
broker_pid=
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { checks=$((checks + 1)); }
pubkey() { sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$1"; }

# ops_config DATA KEYS > kim.cfg — jc.rheine, soz.rheine (agencies) and
# dsb.steinfurt (auditor); keys made in KEYS unless there already.
ops_config() {
    local data=$1 keys=$2 entry id public role
    printf 'broker\n    name = kim.test\n    data = "%s"\n    bind = "ipc://%s/kim.sock"\n' \
        "$data" "$work"
    printf '    dedup_window_s = 31536000\n'
    printf 'audit\n    checkpoint_records = 5\n'
    printf 'policy\n    file = "%s"\n' "$policy"
    printf 'orgs\n'
    for entry in jc.rheine:1:agency soz.rheine:1:agency dsb.steinfurt:1:auditor; do
        IFS=: read -r id public role <<<"$entry"
        [ -f "$keys/$id.cert" ] || "$kim" keygen "$id" --dir "$keys" >/dev/null \
            || fail "keygen $id"
        printf '    %s\n        name = "Test %s"\n        public_body = %s\n' "$id" "$id" "$public"
        printf '        role = %s\n        public_key = "%s"\n' "$role" "$(pubkey "$keys/$id.cert")"
    done
}

# ops_start CONFIG DATA LOG — start kim-broker, poll until jc.rheine gets an answer.
ops_start() {
    local config=$1 data=$2 log=$3
    "$broker_bin" --config "$config" >"$log" 2>&1 &
    broker_pid=$!
    export KIM_ENDPOINT="ipc://$work/kim.sock" KIM_BROKER_KEY="$data/keys/broker.cert"
    unset KIM_CERT
    local deadline=$((SECONDS + 60))
    until [ -f "$KIM_BROKER_KEY" ] && as jc.rheine status --timeout 500 >/dev/null 2>&1; do
        kill -0 "$broker_pid" 2>/dev/null || fail "broker exited: $(tail -5 "$log")"
        [ "$SECONDS" -lt "$deadline" ] || fail "broker did not answer within 60 s"
        sleep 0.1
    done
}

# ops_stop — SIGTERM and wait; a clean stop exits 0.
ops_stop() {
    [ -n "$broker_pid" ] || return 0
    kill "$broker_pid"
    wait "$broker_pid" || fail "broker exited $? on SIGTERM"
    broker_pid=
}

as() { local org=$1; shift; "$kim" "$@" --cert "$keys/$org.cert_secret"; }

# referral N MSG_ID — one JSON line: a REFERRAL jc.rheine -> soz.rheine
referral() {
    printf '{"type":"REFERRAL","msg_id":"%s","recipient":"soz.rheine","referral_id":"R-%s",' \
        "$2" "$1"
    printf '"case_id":"C-%s","subject":"p-%s","purpose":"benefits",' "$1" "$1"
    printf '"legal_basis":{"kind":"statute","citation":"SGB X §69(1)1"},"payload":"x"}\n'
}
