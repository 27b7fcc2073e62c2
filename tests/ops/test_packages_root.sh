#!/usr/bin/env bash
# test_packages_root.sh PKGDIR — the packages installed as an operator
# installs them: a fresh Debian 12 root made with debootstrap (minbase; some
# minutes and the Debian mirror, KIM_DEBIAN_MIRROR), the .deb files of
# PKGDIR installed with apt inside it (dependencies from the mirror,
# maintainer scripts run: user kim, /var/lib/kim), then the broker run there
# as user kim, as its unit runs it: first start makes the keys, --backup
# works as kim, a purge leaves the data. Needs root (chroot, mount).
# Run by test_packages.sh when KIM_PACKAGE_ROOT=1.
set -u
pkgdir=$1
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# The mirror this machine's apt already uses (deb822 or one-line sources),
# unless KIM_DEBIAN_MIRROR names another.
mirror=${KIM_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -1)}
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || fail "no Debian mirror in the apt sources: set KIM_DEBIAN_MIRROR"
[ "$(id -u)" -eq 0 ] || { echo "not root: the installed-root variant is skipped"; exit 0; }
command -v debootstrap >/dev/null || fail "debootstrap missing (apt-get install debootstrap)"
work=$(mktemp -d /var/tmp/kim-root-XXXXXX)
root=$work/root
broker_pid=
cleanup() {
    [ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null
    if mountpoint -q "$root/proc" && ! umount "$root/proc"; then
        echo "left $work: its /proc is still mounted" >&2
        return
    fi
    [ -n "${KEEP:-}" ] || rm -rf --one-file-system "$work"
}
trap cleanup EXIT
in_root() { chroot "$root" "$@"; }

echo "debootstrap bookworm into $root (this takes minutes)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || fail "debootstrap: $(tail -5 "$work/debootstrap.log")"
mount -t proc proc "$root/proc" || fail "cannot mount /proc in the root"
mkdir -p "$root/tmp/debs" && cp "$pkgdir"/*.deb "$root/tmp/debs/"
in_root apt-get update -qq >"$work/apt.log" 2>&1 || fail "apt-get update: $(tail -5 "$work/apt.log")"
debs=()
for deb in "$root"/tmp/debs/*.deb; do debs+=("/tmp/debs/$(basename "$deb")"); done
[ ${#debs[@]} -eq 4 ] || fail "expected 4 packages in $pkgdir"
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq "${debs[@]}" >>"$work/apt.log" 2>&1 \
    || fail "apt-get install: $(tail -20 "$work/apt.log")"

# what postinst made, and what it did not
in_root getent passwd kim | grep -q '^kim:x:[0-9]*:[0-9]*:kim broker[^:]*:/var/lib/kim:' \
    || fail "no system user kim: $(in_root getent passwd kim)"
[ "$(in_root stat -c '%a %U %G' /var/lib/kim)" = "700 kim kim" ] \
    || fail "/var/lib/kim: $(in_root stat -c '%a %U %G' /var/lib/kim)"
[ "$(in_root stat -c '%a %U %G' /etc/kim/kim.cfg)" = "640 root kim" ] \
    || fail "/etc/kim/kim.cfg: $(in_root stat -c '%a %U %G' /etc/kim/kim.cfg)"
[ "$(in_root stat -c '%a %U %G' /var/backups/kim)" = "700 kim kim" ] \
    || fail "/var/backups/kim: $(in_root stat -c '%a %U %G' /var/backups/kim)"
[ -e "$root/var/lib/kim/keys" ] && fail "keys made at install"
in_root getent passwd kim-agent | grep -q '^kim-agent:x:[0-9]*:[0-9]*:kim agent[^:]*:/var/lib/kim-agent:' \
    || fail "no system user kim-agent: $(in_root getent passwd kim-agent)"
[ "$(in_root stat -c '%a %U %G' /var/lib/kim-agent)" = "700 kim-agent kim-agent" ] \
    || fail "/var/lib/kim-agent: $(in_root stat -c '%a %U %G' /var/lib/kim-agent)"
[ "$(in_root stat -c '%a %U %G' /etc/kim/agents)" = "750 root kim-agent" ] \
    || fail "/etc/kim/agents: $(in_root stat -c '%a %U %G' /etc/kim/agents)"
in_root man -w kim-broker >/dev/null 2>&1 || [ -f "$root/usr/share/man/man8/kim-broker.8.gz" ] \
    || [ -f "$root/usr/share/man/man8/kim-broker.8" ] || fail "no kim-broker(8) installed"

# the broker as its unit runs it: user kim, /etc/kim/kim.cfg, ExecStartPre's check
chroot --userspec=kim:kim "$root" /usr/bin/kim-broker --check --config /etc/kim/kim.cfg \
    >"$work/check" 2>&1 || fail "kim-broker --check as kim: $(cat "$work/check")"
chroot --userspec=kim:kim "$root" /usr/bin/kim-broker --config /etc/kim/kim.cfg \
    --bind ipc:///var/lib/kim/kim.sock >"$work/broker.log" 2>&1 &
broker_pid=$!
deadline=$((SECONDS + 60))
until grep -q 'serving on' "$work/broker.log"; do
    kill -0 "$broker_pid" 2>/dev/null || fail "the broker exited: $(cat "$work/broker.log")"
    [ "$SECONDS" -lt "$deadline" ] || fail "the broker did not serve: $(cat "$work/broker.log")"
    sleep 0.2
done
[ "$(in_root stat -c '%a %U' /var/lib/kim/keys/broker.cert_secret)" = "600 kim" ] \
    || fail "broker key: $(in_root stat -c '%a %U' /var/lib/kim/keys/broker.cert_secret)"
chroot --userspec=kim:kim "$root" /usr/bin/kim-broker --config /etc/kim/kim.cfg \
    --backup /var/backups/kim/nightly >"$work/backup" 2>&1 || fail "backup as kim: $(cat "$work/backup")"
in_root /usr/bin/kim audit verify --data /var/backups/kim/nightly >"$work/verify" 2>&1 \
    || fail "verify the backup: $(cat "$work/verify")"
# an office's agent as kim-agent@jc.rheine runs it: user kim-agent, its
# config, key and tokens in /etc/kim/agents, its store in /var/lib/kim-agent
keys=/etc/kim/agents/keys
in_root mkdir -p "$keys"
in_root kim keygen jc.rheine --dir "$keys" >/dev/null || fail "kim keygen in the root"
# secrets belong to the agent's user alone (it refuses group-readable ones)
in_root chown -R kim-agent:kim-agent "$keys" && in_root chmod 0700 "$keys" || fail "key owner"
in_root install -d -o kim-agent -g kim-agent -m 0700 /var/lib/kim-agent/jc.rheine
printf 'erp %s\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    >"$root/etc/kim/agents/jc.rheine.tokens"
cat >"$root/etc/kim/agents/jc.rheine.cfg" <<CFG
agent
    org = jc.rheine
    data = /var/lib/kim-agent/jc.rheine
    cert = $keys/jc.rheine.cert_secret
broker
    endpoint = "ipc:///var/lib/kim/kim.sock"
    key = "$(sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$root/var/lib/kim/keys/broker.cert")"
http
    port = 0
    tokens = /etc/kim/agents/jc.rheine.tokens
CFG
in_root chgrp kim-agent /etc/kim/agents/jc.rheine.cfg
in_root chmod 0640 /etc/kim/agents/jc.rheine.cfg
in_root chown kim-agent:kim-agent /etc/kim/agents/jc.rheine.tokens
in_root chmod 0600 /etc/kim/agents/jc.rheine.tokens
chroot --userspec=kim-agent:kim-agent "$root" /usr/bin/kim-agent --check \
    --config /etc/kim/agents/jc.rheine.cfg >"$work/agent-check" 2>&1 \
    || fail "kim-agent --check as kim-agent: $(cat "$work/agent-check")"
kill "$broker_pid"; wait "$broker_pid" || fail "the broker exited $? on SIGTERM"
broker_pid=

# a purge leaves the data and the user
DEBIAN_FRONTEND=noninteractive in_root apt-get purge -y -qq kim-broker >>"$work/apt.log" 2>&1 \
    || fail "apt-get purge: $(tail -5 "$work/apt.log")"
[ -f "$root/var/lib/kim/keys/broker.cert_secret" ] || fail "purge removed the data"
[ ! -e "$root/etc/kim/kim.cfg" ] || fail "purge left /etc/kim/kim.cfg"
echo "test_packages_root: installed in a debootstrap'd bookworm, ran as kim, agent checked as kim-agent, purged"
