#!/usr/bin/env bash
# deploy/run.sh — install what is missing, build, start the broker with a demo
# registry of the brief's organisations and the shipped policy, play a
# family's story (brief §7) through real agents over real sockets, and leave
# the broker running in the background.
#
#   KIM_DATA    data folder (default ./kim-data in the checkout)
#   KIM_PORT    tcp port (default 7470)
#   KIM_BUILD   build folder (default ./build/release in the checkout)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kim_install
build=${KIM_BUILD:-$KIM_ROOT/build/release}
kim_say "building in $build"
kim_build "$build" -DKIM_TESTS=OFF
bin_broker="$build/broker/kim-broker"
kim="$build/agents/cli/kim"

data=${KIM_DATA:-$KIM_ROOT/kim-data}
port=${KIM_PORT:-7470}
demo="$data/demo"
mkdir -p "$demo/keys"

# The demo registry: the organisations of a family's story in Kreis Steinfurt
# and Kreis Coesfeld. Keys are made once and kept in the data folder.
orgs=(
  "kim.rheine|KIM Case Management Stadt Rheine|1|agency"
  "jc.rheine|Jobcenter Kreis Steinfurt, Standort Rheine|1|agency"
  "mbe.rheine.caritas|Migrationsberatung Caritas Rheine|0|agency"
  "ikt.rheine.vhs|Integrationskurs VHS Rheine|0|agency"
  "ja.rheine|Jugendamt Stadt Rheine|1|agency"
  "aba.rheine|Ausländerbehörde Stadt Rheine|1|agency"
  "kim.coesfeld|KIM Case Management Kreis Coesfeld|1|agency"
  "ja.coesfeld|Jugendamt Kreis Coesfeld|1|agency"
  "dsb.steinfurt|Datenschutzbeauftragte Kreis Steinfurt|1|auditor"
)
config="$demo/kim.cfg"
{
    printf 'broker\n    name = kim.steinfurt\n    data = "%s"\n' "$data"
    printf '    bind = "tcp://127.0.0.1:%s, ipc://%s/kim.sock"\n' "$port" "$data"
    printf 'policy\n    file = "%s"\n' "$KIM_ROOT/deploy/policy.cfg"
    # DEMO ONLY: an overdue referral expires 6 seconds after its deadline
    # (the default is 14 days), so the story can show EXPIRED while you watch.
    printf 'lifecycle\n    expire_seconds = 6\n'
    printf 'orgs\n'
    for entry in "${orgs[@]}"; do
        IFS='|' read -r id name public role <<<"$entry"
        [ -f "$demo/keys/$id.cert_secret" ] || \
            "$kim" keygen "$id" --dir "$demo/keys" >/dev/null
        key=$(sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$demo/keys/$id.cert")
        printf '    %s\n        name = "%s"\n        public_body = %s\n        role = %s\n' \
            "$id" "$name" "$public" "$role"
        printf '        public_key = "%s"\n' "$key"
    done
} >"$config.new"
mv "$config.new" "$config"
"$bin_broker" --check --config "$config" >/dev/null

# One broker per data folder: stop one this script started before.
pidfile="$data/broker.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kim_say "stopping the broker started earlier (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
fi
nohup "$bin_broker" --config "$config" >>"$data/broker.log" 2>&1 &
echo $! >"$pidfile"

export KIM_ENDPOINT="tcp://127.0.0.1:$port"
export KIM_BROKER_KEY="$data/keys/broker.cert"
as() { local org=$1; shift; "$kim" "$@" --cert "$demo/keys/$org.cert_secret"; }
for _ in $(seq 100); do
    [ -f "$KIM_BROKER_KEY" ] && as kim.rheine status --timeout 300 >/dev/null 2>&1 && break
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -20 "$data/broker.log"; exit 1; }
    sleep 0.1
done
kim_say "broker running (pid $(cat "$pidfile")), log in $data/broker.log"

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
    out=$("$kim" send --json --cert "$demo/keys/$from.cert_secret" <<<"$json" 2>&1) || true
    answer "$out"
}

# state ORG REFERRAL: where the referral stands, as the broker tells its party.
state() {
    local out
    out=$(as "$1" referral show "$2" 2>&1) || true
    printf '      referral %s is %s%s%s\n' "$2" "$bold" "$(field state <<<"$out")" "$off"
}

# inbox ORG: what arrived for the organisation (acknowledged).
inbox() {
    local org=$1 line
    note "$org reads its inbox:"
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        local about
        about="referral $(field referral_id <<<"$line")"
        [ "$about" != "referral " ] || about="case $(field case_id <<<"$line")"
        printf '      seq %-4s %-15s from %-19s %s\n' "$(field seq <<<"$line")" \
            "$(field type <<<"$line")" "$(field sender <<<"$line")" "$about"
    done < <(as "$org" inbox --idle 700 2>/dev/null)
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
send kim.rheine REFERRAL jc.rheine --referral "$(R father)" --case "$case_id" \
    --subject p-father --purpose employment --consent "G-$run-father" \
    --msg-id "M-$run-father" --payload - <<<'{"need":"job search support"}'
state kim.rheine "$(R father)"
inbox jc.rheine
note "The job centre acknowledged the delivery; the case manager hears of it (DELIVERED)."
state kim.rheine "$(R father)"

step "3. A move the life cycle refuses: the case manager tries to ACCEPT its own referral"
send kim.rheine ACCEPT jc.rheine --referral "$(R father)"
note "Only the recipient answers. The job centre accepts:"
send jc.rheine ACCEPT kim.rheine --referral "$(R father)" --recipient-ref JC-2026-0815
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

step "7. The family moves to Kreis Coesfeld: the case is handed over"
sendj kim.rheine "{\"type\":\"HANDOVER_OFFER\",\"msg_id\":\"H-$run\",\"recipient\":\"kim.coesfeld\",\"case_id\":\"$case_id\",\"subject\":\"p-family\",\"purpose\":\"case_handover\",\"legal_basis\":{\"kind\":\"consent\",\"consent_id\":\"G-$run-family\"},\"referrals\":[\"$(R father)\",\"$(R course)\",\"$(R son)\"]}"
note "Only the lead may offer; Coesfeld cannot close a case it does not lead yet:"
send kim.coesfeld CASE_CLOSED "" --case "$case_id"
inbox kim.coesfeld
send kim.coesfeld HANDOVER_ACCEPT kim.rheine --case "$case_id" --ref-msg "H-$run" \
    --recipient-ref COE-2026-311
note "Kreis Coesfeld leads the case now; the open referrals moved with it:"
send jc.rheine STATUS kim.rheine --referral "$(R father)" --code in_progress
send jc.rheine STATUS kim.coesfeld --referral "$(R father)" --code in_progress
state kim.coesfeld "$(R father)"

step "8. The youth office hands over under § 86c SGB VIII"
send ja.rheine FORWARD kim.coesfeld --referral "$(R son)" --org ja.coesfeld \
    --msg-id "$(R son)-86c" --purpose youth_welfare --statute "SGB X §69(1)1" \
    --note "§ 86c SGB VIII: continues until Coesfeld takes over"
state kim.coesfeld "$(R son)"
inbox ja.coesfeld
send ja.coesfeld ACCEPT ja.rheine --referral "$(R son)-86c"
send ja.coesfeld OUTCOME ja.rheine --referral "$(R son)-86c" --code completed
state ja.rheine "$(R son)-86c"

step "9. The father revokes his consent"
note "Coesfeld leads the case now, so it records the revocation; it blocks new transfers at once."
sendj kim.coesfeld "{\"type\":\"CONSENT_REVOKE\",\"msg_id\":\"V-$run\",\"case_id\":\"$case_id\",\"consent\":\"G-$run-father\"}"
state kim.coesfeld "$(R father)"
send kim.coesfeld REFERRAL aba.rheine --referral "$(R residence2)" --case "$case_id" \
    --subject p-father --purpose residence --consent "G-$run-father"
note "The job centre received data under that consent, so it is told:"
inbox jc.rheine

step "10. The data-protection officer audits the case"
note "An auditor's key reads the log through the broker; each read is itself logged."
as dsb.steinfurt audit verify --sign-key "$data/keys/broker.sign.pub" 2>&1 | sed 's/^/   /'
as dsb.steinfurt audit case "$case_id" --sign-key "$data/keys/broker.sign.pub" 2>&1 \
    | head -14 | cut -c1-140 | sed 's/^/   /'
note "(the whole timeline: kim audit case $case_id --cert .../dsb.steinfurt.cert_secret)"
note "The access report for the father: who received which of his data, when, on what basis:"
as kim.coesfeld subject report p-father --case "$case_id" 2>&1 | cut -c1-400 | sed 's/^/   /'

step "Where the case manager in Coesfeld stands"
as kim.coesfeld referral list --case "$case_id" | while IFS= read -r line; do
    printf '   %-28s %-14s %s -> %s\n' "$(field referral_id <<<"$line")" \
        "$(field state <<<"$line")" "$(field sender <<<"$line")" "$(field recipient <<<"$line")"
done

cat <<MSG

The broker keeps running (pid $(cat "$pidfile"); stop it with: kill \$(cat $pidfile)).
Look around with the kim tool:

    export KIM_ENDPOINT=$KIM_ENDPOINT KIM_BROKER_KEY=$KIM_BROKER_KEY
    $kim --help
    $kim referral list --open --cert $demo/keys/kim.coesfeld.cert_secret
    $kim referral show $(R father) --cert $demo/keys/jc.rheine.cert_secret
    $kim inbox  --cert $demo/keys/kim.rheine.cert_secret
    $kim audit verify --data $data
    $kim status --cert $demo/keys/kim.rheine.cert_secret

Every demo organisation has its key in $demo/keys/; the registry is $config.
MSG
