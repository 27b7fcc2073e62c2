#!/usr/bin/env bash
# test_upgrade.sh KIM BROKER POLICY OPS_META FIXTURE — a store made by the
# previous format (tests/data/store-v1.tar.gz: version 1, no version key; see
# make_store_v1.sh) opened by this broker: migrated once, its messages there
# (delivered, replayed) and the chain verifies; a store of a newer version is
# refused with a message that says so, by the broker and by --backup.
set -u
kim=$1 broker_bin=$2 policy=$3 ops_meta=$4 fixture=$5
work=$(mktemp -d)
trap '[ -z "$broker_pid" ] || { kill "$broker_pid"; wait "$broker_pid"; } 2>/dev/null
      rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/ops_lib.sh"
tar -C "$work" -xzf "$fixture" || fail "cannot unpack $fixture"
keys=$work/orgkeys
store=$work/data/store
[ "$("$ops_meta" "$store")" = none ] || fail "the fixture is not a version 1 store"
ops_config "$work/data" "$keys" >"$work/kim.cfg"

ops_start "$work/kim.cfg" "$work/data" "$work/first.log"
grep -q "migrating the store from format version 1 to 7" "$work/first.log" \
    || fail "no migration notice: $(cat "$work/first.log")"
grep -q "moved 5 referrals' states under the seqs that opened them" "$work/first.log" \
    || fail "referral states not moved: $(cat "$work/first.log")"
grep -q "indexed 5 referrals by party, case and consent" "$work/first.log" \
    || fail "no referral index built: $(cat "$work/first.log")"
[ "$("$ops_meta" "$store")" = 7 ] || fail "version after migration: $("$ops_meta" "$store")"
ok
# what the old broker wrote: R-3..R-5 still wait for soz.rheine, the ACCEPT
# of R-1 for jc.rheine, and all five referrals are in the log
as soz.rheine inbox --idle 1500 >"$work/inbox.soz" 2>&1 || fail "inbox: $(cat "$work/inbox.soz")"
for i in 3 4 5; do
    grep -q "\"msg_id\":\"v1-$i\"" "$work/inbox.soz" || fail "v1-$i not delivered: $(cat "$work/inbox.soz")"
done
grep -qE '"msg_id":"v1-[12]"' "$work/inbox.soz" && fail "acked messages came again"
as jc.rheine inbox --idle 1500 >"$work/inbox.jc" 2>&1 || fail "inbox: $(cat "$work/inbox.jc")"
grep -q '"type":"ACCEPT".*"referral_id":"R-1"' "$work/inbox.jc" || fail "no ACCEPT: $(cat "$work/inbox.jc")"
ok
"$kim" audit replay --data "$work/data" --type REFERRAL >"$work/replay" 2>&1 || fail "replay: $(cat "$work/replay")"
[ "$(grep -c '"msg_id":"v1-' "$work/replay")" -eq 5 ] || fail "replay: $(cat "$work/replay")"
"$kim" audit verify --data "$work/data" >"$work/verify" 2>&1 || fail "verify: $(cat "$work/verify")"
ok
# new messages go on after the old ones
got=$(referral 6 v2-6 | as jc.rheine send --json)
grep -qE '"seq":[0-9]+,"dup":false' <<<"$got" || fail "send after migration: $got"
ops_stop
ok
# a second start finds a current store: nothing to migrate
ops_start "$work/kim.cfg" "$work/data" "$work/second.log"
grep -q "migrating\|indexed\|moved" "$work/second.log" && fail "migrated twice: $(cat "$work/second.log")"
ops_stop
"$kim" audit verify --data "$work/data" >"$work/verify" 2>&1 || fail "verify: $(cat "$work/verify")"
ok

# a store from a newer release is refused, and left as it was
"$ops_meta" "$store" 8 || fail "cannot set the version"
timeout 60 "$broker_bin" --config "$work/kim.cfg" >"$work/newer.log" 2>&1
rc=$?
[ "$rc" -eq 1 ] || fail "broker on a newer store exited $rc: $(cat "$work/newer.log")"
grep -q "store format version 8 is newer than this kim-broker understands (7)" "$work/newer.log" \
    || fail "no clear message: $(cat "$work/newer.log")"
[ "$("$ops_meta" "$store")" = 8 ] || fail "the newer store was changed"
out=$("$broker_bin" --config "$work/kim.cfg" --backup "$work/backup" 2>&1) && fail "backup of a newer store: $out"
grep -q "cannot open the store" <<<"$out" || fail "backup refusal: $out"
ok
printf 'test_upgrade: %d checks passed\n' "$checks"
