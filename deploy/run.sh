#!/usr/bin/env bash
# deploy/run.sh — install what is missing, build, start two districts' brokers
# (Kreis Steinfurt and Kreis Coesfeld, linked as peers, PROTOCOL.md §16) with
# demo registries of the brief's organisations and the shipped policy, play a
# family's story (brief §7) through real agents over real sockets, with the
# case handed over from one district to the other, and leave both brokers
# running in the background. The job centre's office takes part through its
# own kim-agent (its HTTP API, driven with curl), which keeps running beside
# the brokers.
#
#   KIM_DATA            Steinfurt's data folder (default ./kim-data in the checkout)
#   KIM_PORT            Steinfurt's tcp port (default 7470)
#   KIM_DATA_COESFELD   Coesfeld's data folder (default: KIM_DATA with -coesfeld)
#   KIM_PORT_COESFELD   Coesfeld's tcp port (default: KIM_PORT + 1)
#   KIM_BUILD           build folder (default ./build/release in the checkout)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kim_install
build=${KIM_BUILD:-$KIM_ROOT/build/release}
kim_say "building in $build"
kim_build "$build" -DKIM_TESTS=OFF
bin_broker="$build/broker/kim-broker"
bin_agent="$build/agents/agent/kim-agent"
kim="$build/agents/cli/kim"

data=${KIM_DATA:-$KIM_ROOT/kim-data}
port=${KIM_PORT:-7470}
data_coe=${KIM_DATA_COESFELD:-${data%/}-coesfeld}
port_coe=${KIM_PORT_COESFELD:-$((port + 1))}
demo="$data/demo"
mkdir -p "$demo/keys" "$data_coe"

# The demo registries: the organisations of a family's story in Kreis
# Steinfurt (broker kim.steinfurt) and Kreis Coesfeld (broker broker.coesfeld),
# each registered at its own district's broker. Keys are made once and kept
# in Steinfurt's data folder.
orgs=(
  "kim.rheine|KIM Case Management Stadt Rheine|1|agency|steinfurt"
  "jc.rheine|Jobcenter Kreis Steinfurt, Standort Rheine|1|agency|steinfurt"
  "mbe.rheine.caritas|Migrationsberatung Caritas Rheine|0|agency|steinfurt"
  "ikt.rheine.vhs|Integrationskurs VHS Rheine|0|agency|steinfurt"
  "ja.rheine|Jugendamt Stadt Rheine|1|agency|steinfurt"
  "aba.rheine|Ausländerbehörde Stadt Rheine|1|agency|steinfurt"
  "dsb.steinfurt|Datenschutzbeauftragte Kreis Steinfurt|1|auditor|steinfurt"
  "kim.coesfeld|KIM Case Management Kreis Coesfeld|1|agency|coesfeld"
  "ja.coesfeld|Jugendamt Kreis Coesfeld|1|agency|coesfeld"
)
config="$demo/kim.cfg"
config_coe="$data_coe/kim.cfg"

# A broker's Ed25519 key is kept in hex (keys/broker.sign.pub); a peer's
# sign_key is written in Z85, like every key in the config.
hex_z85() {
    awk -v hex="$1" 'BEGIN {
        digits = "0123456789abcdef"
        z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
        for (i = 1; i + 7 <= length(hex); i += 8) {
            value = 0
            for (j = 0; j < 8; j++)
                value = value * 16 + index(digits, tolower(substr(hex, i + j, 1))) - 1
            chunk = ""
            for (k = 0; k < 5; k++) {
                chunk = substr(z85, value % 85 + 1, 1) chunk
                value = int(value / 85)
            }
            out = out chunk
        }
        print out
    }'
}

# write_config DISTRICT NAME DATA PORT PEER PEER_DATA PEER_PORT FILE: one
# district's broker config: its offices, and the other district's broker as
# its peer once that broker has made its keys (on its first start).
write_config() {
    local district=$1 name=$2 dir=$3 bind_port=$4 peer=$5 peer_dir=$6 peer_port=$7 file=$8
    {
        printf 'broker\n    name = %s\n    data = "%s"\n' "$name" "$dir"
        printf '    bind = "tcp://127.0.0.1:%s, ipc://%s/kim.sock"\n' "$bind_port" "$dir"
        printf 'policy\n    file = "%s"\n' "$KIM_ROOT/deploy/policy.cfg"
        # DEMO ONLY: an overdue referral expires 6 seconds after its deadline
        # (the default is 14 days), so the story can show EXPIRED while you watch.
        printf 'lifecycle\n    expire_seconds = 6\n'
        printf 'orgs\n'
        for entry in "${orgs[@]}"; do
            IFS='|' read -r id name public role home <<<"$entry"
            [ "$home" = "$district" ] || continue
            [ -f "$demo/keys/$id.cert_secret" ] || \
                "$kim" keygen "$id" --dir "$demo/keys" >/dev/null
            key=$(sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$demo/keys/$id.cert")
            printf '    %s\n        name = "%s"\n        public_body = %s\n        role = %s\n' \
                "$id" "$name" "$public" "$role"
            printf '        public_key = "%s"\n' "$key"
        done
        if [ -s "$peer_dir/keys/broker.cert" ] && [ -s "$peer_dir/keys/broker.sign.pub" ]; then
            printf 'peers\n    %s\n        endpoint = "tcp://127.0.0.1:%s"\n' "$peer" "$peer_port"
            printf '        public_key = "%s"\n' \
                "$(sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$peer_dir/keys/broker.cert")"
            printf '        sign_key = "%s"\n' "$(hex_z85 "$(head -1 "$peer_dir/keys/broker.sign.pub")")"
        fi
    } >"$file.new"
    "$bin_broker" --check --config "$file.new" >/dev/null
    # Changed: the running broker rereads it on SIGHUP (kept otherwise)
    if cmp -s "$file.new" "$file"; then rm -f "$file.new"; return 1; fi
    mv "$file.new" "$file"
}
write_configs() {
    local changed=1
    write_config steinfurt kim.steinfurt "$data" "$port" broker.coesfeld "$data_coe" \
        "$port_coe" "$config" && changed=0
    write_config coesfeld broker.coesfeld "$data_coe" "$port_coe" kim.steinfurt "$data" \
        "$port" "$config_coe" && changed=0
    return $changed
}
write_configs || true

# One broker per district and one job-centre agent per data folder: stop the
# ones this script started before (the agent first: it says BYE to the broker).
pidfile="$data/broker.pid"
pidfile_coe="$data_coe/broker.pid"
agent_pidfile="$data/agent-jc.rheine.pid"
for old in "$agent_pidfile:the job centre's kim-agent" "$pidfile:Steinfurt's broker" \
           "$pidfile_coe:Coesfeld's broker"; do
    file=${old%%:*}
    if [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null; then
        kim_say "stopping ${old#*:} started earlier (pid $(cat "$file"))"
        kill "$(cat "$file")"
        for _ in $(seq 50); do kill -0 "$(cat "$file")" 2>/dev/null || break; sleep 0.1; done
    fi
done
nohup "$bin_broker" --config "$config" >>"$data/broker.log" 2>&1 &
echo $! >"$pidfile"
nohup "$bin_broker" --config "$config_coe" >>"$data_coe/broker.log" 2>&1 &
echo $! >"$pidfile_coe"

export KIM_ENDPOINT="tcp://127.0.0.1:$port"
export KIM_BROKER_KEY="$data/keys/broker.cert"
# as ORG kim-arguments...: kim with the organisation's key, at its district's broker.
as() {
    local org=$1 entry id home=steinfurt; shift
    for entry in "${orgs[@]}"; do
        IFS='|' read -r id _ _ _ home <<<"$entry"
        [ "$id" = "$org" ] && break
    done
    if [ "$home" = coesfeld ]; then
        KIM_ENDPOINT="tcp://127.0.0.1:$port_coe" KIM_BROKER_KEY="$data_coe/keys/broker.cert" \
            "$kim" "$@" --cert "$demo/keys/$org.cert_secret"
    else
        "$kim" "$@" --cert "$demo/keys/$org.cert_secret"
    fi
}
for _ in $(seq 100); do
    [ -f "$KIM_BROKER_KEY" ] && as kim.rheine status --timeout 300 >/dev/null 2>&1 \
        && [ -f "$data_coe/keys/broker.cert" ] \
        && as kim.coesfeld status --timeout 300 >/dev/null 2>&1 && break
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -20 "$data/broker.log"; exit 1; }
    kill -0 "$(cat "$pidfile_coe")" 2>/dev/null || { tail -20 "$data_coe/broker.log"; exit 1; }
    sleep 0.1
done
# On the first start each broker made its keys: now each can name the other
# as its peer, and rereads its config (SIGHUP) to link up.
if write_configs; then
    kill -HUP "$(cat "$pidfile")" "$(cat "$pidfile_coe")"
fi
linked=
for _ in $(seq 150); do
    as kim.rheine directory kim.coesfeld >/dev/null 2>&1 \
        && as kim.coesfeld directory kim.rheine >/dev/null 2>&1 && { linked=1; break; }
    sleep 0.1
done
[ -n "$linked" ] || { kim_say "the two brokers did not link up"; tail -5 "$data/broker.log" \
    "$data_coe/broker.log"; exit 1; }
kim_say "Steinfurt's broker running (pid $(cat "$pidfile")), log in $data/broker.log"
kim_say "Coesfeld's broker running (pid $(cat "$pidfile_coe")) on port $port_coe, log in $data_coe/broker.log"
kim_say "the two brokers are linked (each lists the other district's offices)"

# The job centre (jc.rheine) connects through its own kim-agent: the agent
# holds the office's key and serves a local HTTP API on 127.0.0.1, on a port
# the kernel chooses (written to http.port). Its config, token file and
# store live in the demo folder. Every jc.rheine step of the story below
# goes through this agent (a `kim inbox` with the job centre's key would take
# deliveries meant for the agent).
agent_dir="$demo/agent-jc.rheine"
mkdir -p "$agent_dir"
chmod 700 "$agent_dir"
if [ ! -s "$agent_dir/tokens" ]; then
    (umask 077; printf 'case_system %s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" \
        >"$agent_dir/tokens")
fi
token=$(awk '$1 == "case_system" { print $2 }' "$agent_dir/tokens")
cat >"$agent_dir/agent.cfg" <<CFG
#   kim-agent for the job centre in the demo (written by deploy/run.sh).
#   Every key is documented in deploy/agent.cfg.
agent
    org = jc.rheine
    data = "$agent_dir/store"
    cert = "$demo/keys/jc.rheine.cert_secret"
broker
    endpoint = "tcp://127.0.0.1:$port"
    key_file = "$data/keys/broker.cert"
http
    bind = 127.0.0.1
    port = 0
    port_file = "$agent_dir/http.port"
    tokens = "$agent_dir/tokens"
web
    enabled = 1
    users = "$agent_dir/web.users"
    policy = "$KIM_ROOT/deploy/policy.cfg"
CFG
"$bin_agent" --check --config "$agent_dir/agent.cfg" >/dev/null
# The staff page's demo login: a fixed, published password, for this demo only
web_user=demo
web_password=demo-jobcenter
printf '%s\n' "$web_password" \
    | "$bin_agent" --config "$agent_dir/agent.cfg" --add-user "$web_user" --role staff >/dev/null
rm -f "$agent_dir/http.port"
nohup "$bin_agent" --config "$agent_dir/agent.cfg" >>"$agent_dir/agent.log" 2>&1 &
echo $! >"$agent_pidfile"
agent_url=
for _ in $(seq 100); do
    if [ -z "$agent_url" ] && [ -s "$agent_dir/http.port" ]; then
        agent_url="http://127.0.0.1:$(cat "$agent_dir/http.port")"
    fi
    [ -n "$agent_url" ] && curl -sf -H "Authorization: Bearer $token" "$agent_url/v1/status" \
        2>/dev/null | grep -q '"connected":true' && break
    kill -0 "$(cat "$agent_pidfile")" 2>/dev/null || { tail -20 "$agent_dir/agent.log"; exit 1; }
    sleep 0.1
done
[ -n "$agent_url" ] || { kim_say "the job centre's kim-agent did not start"; exit 1; }
kim_say "job centre's kim-agent running (pid $(cat "$agent_pidfile")) on $agent_url, log in $agent_dir/agent.log"

# --- how the story is told ----------------------------------------------------
bold=$'\033[1m'; dim=$'\033[2m'; red=$'\033[31m'; green=$'\033[32m'; off=$'\033[0m'
if [ ! -t 1 ]; then bold=; dim=; red=; green=; off=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
note() { printf '   %s%s%s\n' "$dim" "$*" "$off"; }
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" | head -1; }

# The broker's answer to one message: its log seq, or why it was refused.
answer() {
    local out=$1
    if grep -q '"seq"' <<<"$out"; then
        printf '      %sbroker: logged, seq %s%s\n' "$green" "$(field seq <<<"$out")" "$off"
    else
        printf '      %sbroker REFUSED: %s — %s%s\n' "$red" "$(field error <<<"$out")" \
            "$(sed -n 's/.*"text":"\([^"]*\)".*/\1/p' <<<"$out")" "$off"
        [ -n "$(field error <<<"$out")" ] || printf '      %s\n' "$out"
    fi
}

# send FROM TYPE TO [kim send options]: one message, with the broker's answer.
send() {
    local from=$1 type=$2 to=$3; shift 3
    printf '   %-19s -> %-19s %s %s\n' "$from" "${to:--}" "$type" "$*" | cut -c1-150
    local out
    out=$(as "$from" send --type "$type" ${to:+--to "$to"} "$@" 2>&1) || true
    answer "$out"
}

# sendj FROM 'JSON header': for messages with lists (consents, handovers).
sendj() {
    local from=$1 json=$2
    local what
    what="case $(field case_id <<<"$json")"
    [ -z "$(field consent <<<"$json")" ] || what="consent $(field consent <<<"$json")"
    [ -z "$(field subject <<<"$json")" ] || [ -z "$(field consent <<<"$json")" ] || \
        what="$what of $(field subject <<<"$json"): $(sed -n \
            's/.*"recipients":\[\([^]]*\)\].*"purposes":\[\([^]]*\)\].*/to \1 for \2/p' <<<"$json" | tr -d '"')"
    [ -z "$(sed -n 's/.*"referrals":\[\([^]]*\)\].*/x/p' <<<"$json")" ] || \
        what="$what, open referrals $(sed -n 's/.*"referrals":\[\([^]]*\)\].*/\1/p' <<<"$json" | tr -d '"')"
    printf '   %-19s -> %-19s %s %s\n' "$from" "$(field recipient <<<"$json")" \
        "$(field type <<<"$json")" "$what" | cut -c1-150
    local out
    out=$(as "$from" send --json <<<"$json" 2>&1) || true
    answer "$out"
}

# api METHOD PATH [BODY]: one call to the job centre's kim-agent.
api() {
    curl -s -X "$1" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        "$agent_url$2" ${3:+-d "$3"}
}

# jc TO WHAT METHOD PATH BODY: the job centre's system posts a message to
# its agent (shown as the curl call it makes); then the broker's answer,
# from the agent's outbox record.
jc() {
    local to=$1 what=$2 method=$3 path=$4 body=$5
    printf '   %-19s -> %-19s %s\n' "jc.rheine (agent)" "$to" "$what" | cut -c1-150
    note "   curl -X $method \$AGENT$path -d '$body'" | cut -c1-160
    local out msg_id
    out=$(api "$method" "$path" "$body")
    msg_id=$(field msg_id <<<"$out")
    [ -n "$msg_id" ] || { answer "$out"; return; }
    for _ in $(seq 100); do
        out=$(api GET "/v1/outbox/$msg_id")
        grep -q '"status":"queued"' <<<"$out" || break
        sleep 0.1
    done
    answer "$out"
}

# jc_inbox: the job centre's system reads what its agent received and marks
# each delivery handled. Waits up to 10 s for at least one.
jc_inbox() {
    local out line
    note "jc.rheine's system reads its agent's inbox (curl \$AGENT/v1/inbox?handled=false):"
    for _ in $(seq 100); do
        out=$(api GET '/v1/inbox?handled=false')
        grep -q '"seq"' <<<"$out" && break
        sleep 0.1
    done
    while IFS= read -r line; do
        grep -q '"seq"' <<<"$line" || continue
        local about seq
        seq=$(sed -n 's/.*"seq":\([0-9]*\).*/\1/p' <<<"$line")
        about="referral $(field referral_id <<<"$line")"
        [ "$about" != "referral " ] || about="case $(field case_id <<<"$line")"
        printf '      seq %-4s %-15s from %-19s %s\n' "$seq" "$(field type <<<"$line")" \
            "$(field sender <<<"$line")" "$about"
        api POST "/v1/inbox/$seq/handled" >/dev/null
    done < <(sed 's/},{/}\n{/g' <<<"$out")
}

# state ORG REFERRAL [STATE]: where the referral stands, as the broker of the
# party's district tells it (waiting up to 10 s for STATE, which crosses a link).
state() {
    local out where=Steinfurt
    for _ in $(seq 100); do
        out=$(as "$1" referral show "$2" 2>&1) || true
        [ -z "${3:-}" ] || [ "$(field state <<<"$out")" = "$3" ] && break
        sleep 0.1
    done
    case $1 in *.coesfeld) where=Coesfeld;; esac
    printf '      referral %s is %s%s%s (at %s'"'"'s broker, asked by %s)\n' "$2" "$bold" \
        "$(field state <<<"$out")" "$off" "$where" "$1"
}

# inbox ORG [IDLE_MS [TYPE]]: what arrived for the organisation (acknowledged);
# with TYPE, reads again until one of that type came (what crosses a link
# arrives a moment later), for up to 10 s.
inbox() {
    local org=$1 idle=${2:-700} until=${3:-} line out
    note "$org reads its inbox:"
    for _ in $(seq 10); do
        out=$(as "$org" inbox --idle "$idle" 2>/dev/null) || true
        while IFS= read -r line; do
            [ -n "$line" ] || continue
            local about
            about="referral $(field referral_id <<<"$line")"
            [ "$about" != "referral " ] || about="case $(field case_id <<<"$line")"
            printf '      seq %-4s %-15s from %-19s %s\n' "$(field seq <<<"$line")" \
                "$(field type <<<"$line")" "$(field sender <<<"$line")" "$about"
        done <<<"$out"
        [ -z "$until" ] || grep -q "\"type\":\"$until\"" <<<"$out" && break
    done
}

run=$(date +%s)
case_id="C-$run"
in_a_year=$(( ($(date +%s) + 365 * 24 * 3600) * 1000 ))
R() { printf 'R-%s-%s' "$run" "$1"; }

step "1. A family arrives in Rheine. The KIM case manager records the consents"
note "Each consent names the person (a pseudonym), who may receive what, and for what."
sendj kim.rheine "{\"type\":\"CONSENT_GRANT\",\"msg_id\":\"G-$run-f\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-father\",\"subject\":\"p-father\",\"recipients\":[\"jc.rheine\",\"aba.rheine\",\"kim.coesfeld\"],\"purposes\":[\"employment\",\"residence\"],\"valid_until\":$in_a_year}"
sendj kim.rheine "{\"type\":\"CONSENT_GRANT\",\"msg_id\":\"G-$run-m\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-mother\",\"subject\":\"p-mother\",\"recipients\":[\"mbe.rheine.caritas\",\"ikt.rheine.vhs\"],\"purposes\":[\"counselling\",\"language_course\"],\"valid_until\":$in_a_year}"
sendj kim.rheine "{\"type\":\"CONSENT_GRANT\",\"msg_id\":\"G-$run-s\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-son\",\"subject\":\"p-son\",\"recipients\":[\"ja.rheine\"],\"purposes\":[\"youth_welfare\"],\"valid_until\":$in_a_year}"
sendj kim.rheine "{\"type\":\"CONSENT_GRANT\",\"msg_id\":\"G-$run-h\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-family\",\"subject\":\"p-family\",\"recipients\":[\"kim.coesfeld\"],\"purposes\":[\"case_handover\"],\"valid_until\":$in_a_year}"

step "2. The father is referred to the job centre, which accepts"
note "The job centre's case software talks to its own kim-agent, AGENT=$agent_url."
send kim.rheine REFERRAL jc.rheine --referral "$(R father)" --case "$case_id" \
    --subject p-father --purpose employment --consent "G-$run-father" \
    --msg-id "M-$run-father" --payload - <<<'{"need":"job search support"}'
jc_inbox
note "The job centre's agent stored the delivery (payload opened) before acknowledging it; the"
note "case manager hears of it (DELIVERED)."
for _ in $(seq 50); do
    [ "$(as kim.rheine referral show "$(R father)" 2>/dev/null | field state)" = SENT ] || break
    sleep 0.1
done
state kim.rheine "$(R father)"

step "3. A move the life cycle refuses: the case manager tries to ACCEPT its own referral"
send kim.rheine ACCEPT jc.rheine --referral "$(R father)"
note "Only the recipient answers. The job centre's system accepts through its agent, which"
note "addresses the ACCEPT to the referral's sender and sends it:"
jc kim.rheine ACCEPT POST "/v1/referrals/$(R father)/answer" \
    "{\"answer\":\"accept\",\"msg_id\":\"JC-$run-1\",\"recipient_case_ref\":\"JC-2026-0815\"}"
state kim.rheine "$(R father)"

step "4. The mother is referred to migration counselling, which declines for capacity"
send kim.rheine REFERRAL mbe.rheine.caritas --referral "$(R mother)" --case "$case_id" \
    --subject p-mother --purpose counselling --consent "G-$run-mother"
inbox mbe.rheine.caritas
send mbe.rheine.caritas DECLINE kim.rheine --referral "$(R mother)" --code capacity \
    --note "No places before March; the VHS integration course has places"
state kim.rheine "$(R mother)"
note "Pointed to the integration course provider, the case manager refers her there; it accepts."
send kim.rheine REFERRAL ikt.rheine.vhs --referral "$(R course)" --case "$case_id" \
    --subject p-mother --purpose language_course --consent "G-$run-mother"
send ikt.rheine.vhs ACCEPT kim.rheine --referral "$(R course)"
state kim.rheine "$(R course)"

step "5. The son is referred to the youth office, which accepts and reports progress"
send kim.rheine REFERRAL ja.rheine --referral "$(R son)" --case "$case_id" \
    --subject p-son --purpose youth_welfare --consent "G-$run-son"
send ja.rheine ACCEPT kim.rheine --referral "$(R son)"
send ja.rheine STATUS kim.rheine --referral "$(R son)" --code appointment_set
state kim.rheine "$(R son)"

step "6. A referral nobody answers: the immigration office, deadline in 5 seconds"
deadline=$(( ($(date +%s) + 5) * 1000 ))
send kim.rheine REFERRAL aba.rheine --referral "$(R residence)" --case "$case_id" \
    --subject p-father --purpose residence --consent "G-$run-father" --deadline "$deadline"
note "Waiting for the deadline (5 s) and the demo's grace period (6 s)..."
for _ in $(seq 40); do
    s=$(as kim.rheine referral show "$(R residence)" 2>/dev/null | field state)
    [ "$s" = EXPIRED ] && break
    sleep 0.5
done
state kim.rheine "$(R residence)"
inbox kim.rheine
note "REMINDERs went to both sides when it turned OVERDUE; the EXPIRED alert to the case manager."
inbox aba.rheine

step "7. The family moves to Kreis Coesfeld: the case is handed over to the other district"
note "Kreis Coesfeld runs its own broker (port $port_coe, data in $data_coe), linked to"
note "Steinfurt's as a peer. The offer goes broker to broker; the family consent, which names"
note "kim.coesfeld, went to Coesfeld's broker ahead of it (step 1), which checks the offer under it."
sendj kim.rheine "{\"type\":\"HANDOVER_OFFER\",\"msg_id\":\"H-$run\",\"recipient\":\"kim.coesfeld\",\"case_id\":\"$case_id\",\"subject\":\"p-family\",\"purpose\":\"case_handover\",\"legal_basis\":{\"kind\":\"consent\",\"consent_id\":\"G-$run-family\"},\"referrals\":[\"$(R father)\",\"$(R course)\",\"$(R son)\"]}"
inbox kim.coesfeld 700 HANDOVER_OFFER
note "Only the lead may offer; Coesfeld cannot close a case it does not lead yet:"
send kim.coesfeld CASE_CLOSED "" --case "$case_id"
send kim.coesfeld HANDOVER_ACCEPT kim.rheine --case "$case_id" --ref-msg "H-$run" \
    --recipient-ref COE-2026-311
for _ in $(seq 100); do
    [ "$(as jc.rheine referral show "$(R father)" 2>/dev/null | field sender)" = kim.coesfeld ] \
        && break
    sleep 0.1
done
note "Kreis Coesfeld leads the case now, at both brokers. The open referrals moved with it:"
note "Steinfurt's broker sent Coesfeld's the record of each (HANDED_OVER), so both ends know them:"
inbox kim.coesfeld 1000 HANDED_OVER
state kim.coesfeld "$(R father)" ACCEPTED
state jc.rheine "$(R father)"
note "A status report addressed to Rheine is refused:"
jc kim.rheine "STATUS in_progress" POST /v1/messages \
    "{\"type\":\"STATUS\",\"msg_id\":\"JC-$run-2\",\"recipient\":\"kim.rheine\",\"referral_id\":\"$(R father)\",\"code\":\"in_progress\"}"
note "The job centre's agent follows the handovers of its cases (it subscribes to them), so its"
note "view names the new lead and the answer route addresses it:"
for _ in $(seq 50); do
    api GET "/v1/referrals/$(R father)" | grep -q '"counterpart":"kim.coesfeld"' && break
    sleep 0.1
done
printf '      in the job centre'"'"'s agent, referral %s goes to %s%s%s\n' "$(R father)" "$bold" \
    "$(api GET "/v1/referrals/$(R father)" | field counterpart)" "$off"
jc kim.coesfeld "STATUS in_progress" POST "/v1/referrals/$(R father)/answer" \
    "{\"answer\":\"status\",\"code\":\"in_progress\",\"msg_id\":\"JC-$run-3\"}"
note "Logged in Steinfurt, it crosses the link and passes Coesfeld's life cycle too:"
state jc.rheine "$(R father)"
state kim.coesfeld "$(R father)" IN_PROGRESS

step "8. The youth office hands over under § 86c SGB VIII, across the district border"
note "Rheine's youth office forwards to Coesfeld's: the FORWARD goes to the new lead with its"
note "payload over the link, and Coesfeld's broker delivers it to its youth office."
send ja.rheine FORWARD kim.coesfeld --referral "$(R son)" --org ja.coesfeld \
    --msg-id "$(R son)-86c" --purpose youth_welfare --statute "SGB X §69(1)1" \
    --note "§ 86c SGB VIII: continues until Coesfeld takes over"
state kim.coesfeld "$(R son)" FORWARDED
inbox ja.coesfeld 700 FORWARD
send ja.coesfeld ACCEPT ja.rheine --referral "$(R son)-86c"
send ja.coesfeld OUTCOME ja.rheine --referral "$(R son)-86c" --code completed
state ja.rheine "$(R son)-86c" COMPLETED
state ja.coesfeld "$(R son)-86c"

step "9. The father revokes his consent"
note "Coesfeld leads the case now, so it records the revocation at its broker; it blocks new"
note "transfers at once, and goes to Steinfurt's broker too (the consent names offices there):"
sendj kim.coesfeld "{\"type\":\"CONSENT_REVOKE\",\"msg_id\":\"V-$run\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-father\"}"
state kim.coesfeld "$(R father)"
state jc.rheine "$(R father)" SUSPENDED
send kim.coesfeld REFERRAL aba.rheine --referral "$(R residence2)" --case "$case_id" \
    --subject p-father --purpose residence --consent "G-$run-father"
note "The job centre received data under that consent, so its agent is told, and its view of"
note "the referral follows (curl \$AGENT/v1/referrals/$(R father)). Its inbox also holds the"
note "handover it followed:"
jc_inbox
for _ in $(seq 50); do
    api GET "/v1/referrals/$(R father)" | grep -q '"state":"SUSPENDED"' && break
    sleep 0.1
done
printf '      in the job centre'"'"'s agent, referral %s is %s%s%s\n' "$(R father)" "$bold" \
    "$(api GET "/v1/referrals/$(R father)" | field state)" "$off"

step "10. The data-protection officer audits the case"
note "An auditor's key reads the log through the broker; each read is itself logged."
as dsb.steinfurt audit verify --sign-key "$data/keys/broker.sign.pub" 2>&1 | sed 's/^/   /'
as dsb.steinfurt audit case "$case_id" --sign-key "$data/keys/broker.sign.pub" 2>&1 \
    | sed -n 1,14p | cut -c1-140 | sed 's/^/   /'
note "(the whole timeline: kim audit case $case_id --cert .../dsb.steinfurt.cert_secret)"
note "The access report for the father: who received which of his data, when, on what basis."
note "Each district's broker reports what passed through it; in Steinfurt, kim.rheine asks:"
as kim.rheine subject report p-father --case "$case_id" 2>&1 | cut -c1-400 | sed 's/^/   /'

step "Where the case manager in Coesfeld stands"
as kim.coesfeld referral list --case "$case_id" | while IFS= read -r line; do
    printf '   %-28s %-14s %s -> %s\n' "$(field referral_id <<<"$line")" \
        "$(field state <<<"$line")" "$(field sender <<<"$line")" "$(field recipient <<<"$line")"
done

cat <<MSG

Both brokers keep running: Kreis Steinfurt's (pid $(cat "$pidfile"), port $port; stop it
with: kill \$(cat $pidfile)) and Kreis Coesfeld's (pid $(cat "$pidfile_coe"), port $port_coe,
data in $data_coe; stop it with: kill \$(cat $pidfile_coe)).
The job centre's kim-agent keeps running beside them on $agent_url
(pid $(cat "$agent_pidfile"); stop it with: kill \$(cat $agent_pidfile)). Ask it as the
job centre's system does (docs/agent.md, agents/agent/openapi.json):

    AGENT=$agent_url TOKEN=\$(awk '{print \$2}' $agent_dir/tokens)
    curl -H "Authorization: Bearer \$TOKEN" \$AGENT/v1/referrals
    curl -H "Authorization: Bearer \$TOKEN" \$AGENT/v1/cases/$case_id
    curl -H "Authorization: Bearer \$TOKEN" "\$AGENT/v1/inbox?handled=false"

The job centre's staff web page (inbox, referrals, cases, consents) is open at

    $agent_url/ui/

Demo login (a published demo password, for this demo only): user $web_user,
password $web_password.

Look around with the kim tool:

    export KIM_ENDPOINT=$KIM_ENDPOINT KIM_BROKER_KEY=$KIM_BROKER_KEY
    $kim --help
    $kim referral list --open --cert $demo/keys/kim.rheine.cert_secret
    $kim referral show $(R father) --cert $demo/keys/jc.rheine.cert_secret
    $kim inbox  --cert $demo/keys/kim.rheine.cert_secret
    $kim audit verify --data $data
    $kim status --cert $demo/keys/kim.rheine.cert_secret

Coesfeld's offices talk to their own broker:

    KIM_ENDPOINT=tcp://127.0.0.1:$port_coe KIM_BROKER_KEY=$data_coe/keys/broker.cert \\
        $kim referral list --case $case_id --cert $demo/keys/kim.coesfeld.cert_secret

Every demo organisation has its key in $demo/keys/; the registries are $config
(Steinfurt) and $config_coe (Coesfeld).
MSG
