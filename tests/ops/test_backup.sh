#!/usr/bin/env bash
# test_backup.sh KIM BROKER POLICY — a hot backup under load, restored into a
# new folder: a broker started on it has every message receipted before the
# backup began, still knows their msg_ids (a resend is a dup with the first
# seq), and `kim audit verify` is green. The hot backup is then cut from the
# power (tests/fault/powercut: KIM_POWERCUT, the library that records its
# unflushed writes, and KIM_POWERCUT_BIN, kim-powercut, which takes them back)
# before it is restored: a backup that reported success must be on disk.
# Also the refusals: an existing target, a folder that is no kim store, a
# target inside the data folder.
set -u
kim=$1 broker_bin=$2 policy=$3
work=$(mktemp -d)
load_pid=
trap '[ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null
      [ -z "$broker_pid" ] || { kill "$broker_pid"; wait "$broker_pid"; } 2>/dev/null
      [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/ops_lib.sh"
keys=$work/orgkeys
ops_config "$work/live" "$keys" >"$work/live.cfg"
ops_start "$work/live.cfg" "$work/live" "$work/live.log"

# 50 referrals, all receipted before the backup begins
count=50
for i in $(seq 1 $count); do referral "$i" "b-$i"; done | as jc.rheine send --json \
    >"$work/before" || fail "send: $(cat "$work/before")"
[ "$(grep -c '"dup":false' "$work/before")" -eq $count ] || fail "not all receipted: $(cat "$work/before")"
ok

# the load: another agency keeps sending while the backup runs (paced, so
# that it is still sending when the backup starts and after it ended)
( for i in $(seq 1 20000); do
      printf '{"type":"INFO_REQUEST","msg_id":"l-%s","recipient":"jc.rheine","referral_id":"R-1"}\n' "$i"
      [ $((i % 20)) -eq 0 ] && { [ -e "$work/stop" ] && break; sleep 0.01; }
  done ) | as soz.rheine send --json >"$work/load" 2>"$work/load.err" &
load_pid=$!
receipts() { grep -c '"seq"' "$work/load" 2>/dev/null || true; }
wait_receipts() {       # wait_receipts N: until the load has more than N receipts
    local deadline=$((SECONDS + 60))
    until [ "$(receipts)" -gt "$1" ]; do
        grep -q '"error"' "$work/load" && fail "load refused: $(grep -m1 error "$work/load")"
        kill -0 "$load_pid" 2>/dev/null || fail "the load ended early: $(cat "$work/load.err")"
        [ "$SECONDS" -lt "$deadline" ] || fail "the load made no progress: $(tail -3 "$work/load")"
        sleep 0.05
    done
}
wait_receipts 20
during=$(receipts)
[ -r "${KIM_POWERCUT:-}" ] && [ -x "${KIM_POWERCUT_BIN:-}" ] \
    || fail "KIM_POWERCUT and KIM_POWERCUT_BIN must name the power-cut library and tool"
LD_PRELOAD=$KIM_POWERCUT KIM_POWERCUT_DIR=$work \
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
"$broker_bin" --config "$work/live.cfg" --backup "$work/backup" >"$work/backup.out" 2>&1 \
    || fail "backup exited $?: $(cat "$work/backup.out")"
# the power fails the moment the backup said it was done: what it did not
# flush is lost (its two stores were watched: the log and the payload keys)
cut=$("$KIM_POWERCUT_BIN" --worst "$work") || fail "power cut: $cut"
grep -q " in 2 files," <<<"$cut" || fail "the power cut found no watched store: $cut"
wait_receipts "$during"             # the broker served on across the backup
touch "$work/stop"                  # the load ends its input; kim send waits for the answers
wait "$load_pid" || fail "the load's kim send exited $?: $(grep -m1 error "$work/load")"
load_pid=
grep -qE "^backup of .* log up to seq [0-9]+ \(live head [0-9]+ when it began\)" "$work/backup.out" \
    || fail "backup report: $(cat "$work/backup.out")"
ok
[ "$(stat -c %a "$work/backup")" = 700 ] && [ "$(stat -c %a "$work/backup/store/data.mdb")" = 600 ] \
    && [ "$(stat -c %a "$work/backup/keys/broker.cert_secret")" = 600 ] \
    || fail "backup modes: $(ls -lR "$work/backup")"
[ ! -e "$work/backup/store/lock.mdb" ] || fail "backup holds a lock file"
ls "$work" | grep -q partial && fail "a partial folder was left"
ok

# refusals: the target exists; not a store; a target inside the data folder
out=$("$broker_bin" --data "$work/live" --backup "$work/backup" 2>&1) && fail "backup over a folder: $out"
grep -q 'exists' <<<"$out" || fail "existing target: $out"; ok
mkdir "$work/empty"
out=$("$broker_bin" --data "$work/empty" --backup "$work/b2" 2>&1) && fail "backup of nothing: $out"
grep -q 'cannot open the store' <<<"$out" && [ ! -e "$work/b2" ] || fail "not a store: $out"; ok
out=$("$broker_bin" --data "$work/live" --backup "$work/live/keys/b3" 2>&1) && fail "backup inside: $out"
grep -q 'inside the data folder' <<<"$out" || fail "inside: $out"; ok
# a second backup, named with a trailing slash, of the same live broker
"$broker_bin" --config "$work/live.cfg" --backup "$work/second/" >"$work/second.out" 2>&1 \
    && [ -f "$work/second/store/data.mdb" ] || fail "backup to DIR/: $(cat "$work/second.out")"
ok

ops_stop
# a stopped broker's folder backs up too (the way to shrink a store without loss)
"$broker_bin" --config "$work/live.cfg" --backup "$work/cold" >"$work/cold.out" 2>&1 \
    || fail "backup of a stopped broker: $(cat "$work/cold.out")"
"$kim" audit verify --data "$work/cold" >"$work/verify" 2>&1 || fail "verify cold: $(cat "$work/verify")"
ok
# restore: the backup copied into a new folder, a broker started on it
cp -a "$work/backup" "$work/restored"
ops_config "$work/restored" "$keys" >"$work/restored.cfg"
ops_start "$work/restored.cfg" "$work/restored" "$work/restored.log"

"$kim" audit verify --data "$work/restored" >"$work/verify" 2>&1 \
    || fail "audit verify: $(cat "$work/verify")"
ok
# every message receipted before the backup reaches its recipient
as soz.rheine inbox --idle 2000 >"$work/inbox" 2>"$work/inbox.err" || fail "inbox: $(cat "$work/inbox.err")"
for i in $(seq 1 $count); do
    seq=$(sed -n "s/^{\"msg_id\":\"b-$i\",\"seq\":\([0-9]*\),.*/\1/p" "$work/before")
    grep -q "^{\"seq\":$seq,\"hdr\":{.*\"msg_id\":\"b-$i\"" "$work/inbox" \
        || fail "b-$i (seq $seq) not delivered after the restore"
done
ok
# and so does every load message receipted before the backup was started
head -n "$during" "$work/load" | sed -n 's/^{"msg_id":"\(l-[0-9]*\)","seq":\([0-9]*\),.*/\2 \1/p' \
    >"$work/load.before"
[ "$(wc -l <"$work/load.before")" -eq "$during" ] || fail "load receipts: $(head -3 "$work/load")"
as jc.rheine inbox --idle 2000 >"$work/inbox.jc" 2>"$work/inbox.err" || fail "inbox: $(cat "$work/inbox.err")"
while read -r seq id; do
    grep -q "^{\"seq\":$seq,\"hdr\":{.*\"msg_id\":\"$id\"" "$work/inbox.jc" \
        || fail "$id (seq $seq) not delivered after the restore"
done <"$work/load.before"
ok
# de-duplication intact: a resend of an old msg_id is a dup with its first seq
seq7=$(sed -n 's/^{"msg_id":"b-7","seq":\([0-9]*\),.*/\1/p' "$work/before")
got=$(referral 7 b-7 | as jc.rheine send --json)
[ "$got" = "{\"msg_id\":\"b-7\",\"seq\":$seq7,\"dup\":true,\"line\":1}" ] || fail "resend of b-7: $got"
ok
# and the restored broker takes new messages after its head
got=$(referral 51 b-51 | as jc.rheine send --json)
grep -q '"dup":false' <<<"$got" || fail "new message after restore: $got"
ok
ops_stop
printf 'test_backup: %d checks passed (%s load receipts before the backup, %s in all; %s)\n' \
    "$checks" "$during" "$(receipts)" "$cut"
