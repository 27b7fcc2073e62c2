#!/usr/bin/env bash
# deploy/run.sh — install what is missing, build, start the broker on its
# embedded default (tcp://127.0.0.1:7470, data in ./kim-data, keys made on
# first start) with a demo registry of agencies, play a short demo, and
# leave the broker running in the background.
#
#   KIM_DATA    data folder (default ./kim-data in the checkout)
#   KIM_PORT    tcp port (default 7470)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kim_install
build="$KIM_ROOT/build/release"
kim_say "building in $build"
kim_build "$build" -DKIM_TESTS=OFF
bin_broker="$build/broker/kim-broker"
kim="$build/agents/kim"

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

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '   %s\n' "$@"; }
run=$(date +%s)

step "KIM Rheine refers the father (subject p-father) to the job centre"
as kim.rheine send --type REFERRAL --to jc.rheine --referral "R-$run-1" --case "C-$run" \
    --subject p-father --purpose employment --consent "CONSENT-$run-father" \
    --msg-id "M-$run-1" --payload - <<<'{"need":"job search support"}' | sed 's/^/   receipt: /'

step "The same message again (a retry after a network fault): the broker knows it"
as kim.rheine send --type REFERRAL --to jc.rheine --referral "R-$run-1" --case "C-$run" \
    --subject p-father --purpose employment --consent "CONSENT-$run-father" \
    --msg-id "M-$run-1" --payload - <<<'{"need":"job search support"}' | sed 's/^/   receipt: /'

step "The job centre reads its inbox (each message printed, then acknowledged)"
as jc.rheine inbox --idle 500 | sed 's/^/   /'

step "The job centre accepts"
as jc.rheine send --type ACCEPT --to kim.rheine --referral "R-$run-1" \
    --recipient-ref "JC-2026-0815" --ref-msg "M-$run-1" | sed 's/^/   receipt: /'

step "KIM Rheine refers the mother to migration counselling, which declines for capacity"
as kim.rheine send --type REFERRAL --to mbe.rheine.caritas --referral "R-$run-2" \
    --case "C-$run" --subject p-mother --purpose counselling \
    --consent "CONSENT-$run-mother" | sed 's/^/   receipt: /'
as mbe.rheine.caritas inbox --idle 500 >/dev/null
as mbe.rheine.caritas send --type DECLINE --to kim.rheine --referral "R-$run-2" \
    --code capacity --org ikt.rheine.vhs | sed 's/^/   receipt: /' || true

step "A message that claims another sender is refused: identity comes from the key"
as kim.rheine send --type REFERRAL --to jc.rheine --referral "R-$run-3" --case "C-$run" \
    --subject p-son --purpose employment --statute "SGB X §69(1)1" \
    --json <<<"{\"type\":\"REFERRAL\",\"msg_id\":\"M-$run-3\",\"sender\":\"jc.rheine\",\"recipient\":\"ja.rheine\",\"referral_id\":\"R-$run-3\",\"case_id\":\"C-$run\",\"subject\":\"p-son\",\"purpose\":\"youth\",\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"SGB VIII §8a\"}}" \
    | sed 's/^/   answer: /' || true

step "KIM Rheine reads the answers"
as kim.rheine inbox --idle 500 | sed 's/^/   /'

step "Broker figures for KIM Rheine"
as kim.rheine status | sed 's/^/   /'

cat <<MSG

The broker keeps running (pid $(cat "$pidfile"); stop it with: kill \$(cat $pidfile)).
Look around with the kim tool:

    export KIM_ENDPOINT=$KIM_ENDPOINT KIM_BROKER_KEY=$KIM_BROKER_KEY
    $kim --help
    $kim status --cert $demo/keys/kim.rheine.cert_secret
    $kim inbox  --cert $demo/keys/jc.rheine.cert_secret

Every demo organisation has its key in $demo/keys/; the registry is $config.
MSG
