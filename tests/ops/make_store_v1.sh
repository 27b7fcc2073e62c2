#!/usr/bin/env bash
# make_store_v1.sh KIM BROKER POLICY OUT.tar.gz — how tests/data/store-v1.tar.gz
# was made (by the broker of store format version 1, before stores carried a
# version key): five referrals jc.rheine -> soz.rheine (msg_ids v1-1..v1-5),
# soz.rheine reads and acks two and accepts R-1, then a compacted backup of
# the data folder. The archive holds data/ (store, broker keys) and orgkeys/
# (the organisations' key pairs: test keys, never used elsewhere).
set -u
kim=$(realpath "$1") broker_bin=$(realpath "$2") policy=$(realpath "$3") out=$4
work=$(mktemp -d)
trap '[ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null; rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/ops_lib.sh"
keys=$work/orgkeys
ops_config "$work/live" "$keys" >"$work/kim.cfg"
ops_start "$work/kim.cfg" "$work/live" "$work/broker.log"
for i in 1 2 3 4 5; do referral "$i" "v1-$i"; done | as jc.rheine send --json >"$work/sent" \
    || fail "send: $(cat "$work/sent")"
as soz.rheine inbox --count 2 >/dev/null || fail "inbox"
as soz.rheine send --type ACCEPT --to jc.rheine --referral R-1 >/dev/null || fail "accept"
"$broker_bin" --config "$work/kim.cfg" --backup "$work/data" || fail "backup"
ops_stop
mkdir "$work/pack" && mv "$work/data" "$work/pack/data" && cp -a "$keys" "$work/pack/orgkeys"
tar -C "$work/pack" --owner=0 --group=0 --numeric-owner -czf "$out" data orgkeys
echo "made $out: $(tr '\n' ' ' <"$work/sent")"
