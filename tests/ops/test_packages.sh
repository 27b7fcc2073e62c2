#!/usr/bin/env bash
# test_packages.sh BUILD_DIR CPACK SANITIZE — the Debian packages made by
# CPack from this build: their contents, an install into a fresh root with
# `dpkg --root` (unpacked: the maintainer scripts would act on the host),
# and the installed programs run from there: kim-broker --check on the
# shipped /etc/kim, a first start that makes the keys (none at install), the
# installed kim talking to it, and a program built against kim-dev's kim.pc.
#
# KIM_PACKAGE_ROOT=1 adds the full install (test_packages_root.sh): a Debian
# root made with debootstrap (minutes, needs the Debian mirror), the
# packages installed with apt inside it (postinst: user kim, /var/lib/kim),
# and the broker run there as user kim.
set -u
build=$1 cpack=$2 sanitize=$3
work=$(mktemp -d)
broker_pid=
trap '[ -z "$broker_pid" ] || { kill "$broker_pid"; wait "$broker_pid"; } 2>/dev/null
      [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
checks=0
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { checks=$((checks + 1)); }
command -v dpkg-deb >/dev/null && command -v dpkg-shlibdeps >/dev/null \
    || { echo "dpkg-dev missing: skipped"; exit 77; }

(cd "$build" && "$cpack" -G DEB -B "$work/pkg" >"$work/cpack.log" 2>&1) \
    || fail "cpack: $(tail -20 "$work/cpack.log")"
debs=("$work"/pkg/*.deb)
[ ${#debs[@]} -eq 4 ] || fail "expected 4 packages: ${debs[*]}"
contents() { dpkg-deb --contents "$work"/pkg/"$1"_*.deb | awk '{print $6}'; }
has() {         # has PACKAGE PATH...
    local pkg=$1 path; shift
    for path in "$@"; do
        contents "$pkg" | grep -qx -- "./${path#/}" || fail "$pkg lacks $path"
        ok
    done
}
has kim-broker /usr/bin/kim-broker /etc/kim/kim.cfg /etc/kim/policy.cfg \
    /usr/lib/systemd/system/kim-broker.service /usr/lib/systemd/system/kim-backup.service \
    /usr/lib/systemd/system/kim-backup.timer /usr/share/doc/kim-broker/operations.md
has kim /usr/bin/kim
has kim-agent /usr/bin/kim-agent /usr/lib/systemd/system/kim-agent@.service \
    /usr/share/doc/kim-agent/agent.cfg /usr/share/doc/kim-agent/agent.md \
    /usr/share/doc/kim-agent/openapi.json
contents kim-dev | grep -q '/kim\.pc$' && contents kim-dev | grep -q '/libkimclient\.a$' \
    && contents kim-dev | grep -q '/libkimproto\.a$' || fail "kim-dev lacks kim.pc or a library"
has kim-dev /usr/include/kim/kim_client.h /usr/include/kim/kim_msg.h
if [ -f "$build/man/kim-broker.8" ]; then
    has kim-broker /usr/share/man/man8/kim-broker.8 /usr/share/man/man5/kim.cfg.5 \
        /usr/share/man/man5/kim-policy.5
    has kim /usr/share/man/man1/kim.1
    has kim-agent /usr/share/man/man8/kim-agent.8
fi
contents kim-broker | grep -q '/var/lib/kim' && fail "kim-broker ships /var/lib/kim (postinst makes it)"
contents kim-broker | grep -q 'keys' && fail "kim-broker ships keys"
ok
info=$(dpkg-deb --info "$work"/pkg/kim-broker_*.deb)
grep -q '^ Depends:.*adduser' <<<"$info" && grep -q '^ Depends:.*libzmq5' <<<"$info" \
    || fail "kim-broker's Depends: $info"
dpkg-deb --ctrl-tarfile "$work"/pkg/kim-broker_*.deb | tar -xO ./conffiles >"$work/conffiles"
grep -qx /etc/kim/kim.cfg "$work/conffiles" && grep -qx /etc/kim/policy.cfg "$work/conffiles" \
    || fail "conffiles: $(cat "$work/conffiles")"
dpkg-deb --ctrl-tarfile "$work"/pkg/kim-broker_*.deb | tar -xO ./postinst >"$work/postinst"
grep -q 'adduser --system' "$work/postinst" || fail "postinst makes no system user"
sh -n "$work/postinst" || fail "postinst does not parse"
dpkg-deb --ctrl-tarfile "$work"/pkg/kim-agent_*.deb | tar -xO ./postinst >"$work/agent.postinst"
grep -q 'adduser --system' "$work/agent.postinst" && grep -q 'disabled-login.* kim-agent' "$work/agent.postinst" \
    || fail "agent postinst makes no user"
sh -n "$work/agent.postinst" || fail "agent postinst does not parse"
contents kim-agent | grep -q '/var/lib/kim-agent' && fail "kim-agent ships /var/lib/kim-agent"
ok

# a fresh root: an empty dpkg database, the three packages unpacked into it
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg --root="$root" --force-depends --force-not-root --force-bad-path --unpack "${debs[@]}" \
    >"$work/dpkg.log" 2>&1 || fail "dpkg --unpack: $(cat "$work/dpkg.log")"
for pkg in kim-broker kim kim-dev kim-agent; do
    dpkg --root="$root" -s "$pkg" 2>/dev/null | grep -q '^Status: install ok unpacked' \
        || fail "$pkg is not unpacked in the root"
done
[ -e "$root/var/lib/kim" ] && fail "/var/lib/kim exists before the first start"
# dpkg puts conffiles in place when it configures, which runs the postinst:
# that is the KIM_PACKAGE_ROOT variant's; here they are put in place by hand
for file in kim.cfg policy.cfg; do
    [ "$(stat -c %a "$root/etc/kim/$file.dpkg-new")" = 640 ] || fail "$file is not mode 640"
    mv "$root/etc/kim/$file.dpkg-new" "$root/etc/kim/$file"
done
ok

# the installed broker checks the installed configuration (policy beside it)
out=$("$root/usr/bin/kim-broker" --check --config "$root/etc/kim/kim.cfg" 2>&1) \
    || fail "installed kim-broker --check: $out"
grep -q "configuration OK: broker kim.local, 1 endpoint(s), data /var/lib/kim, 0 organisation(s), 0 peer(s), policy $root/etc/kim/policy.cfg" <<<"$out" \
    || fail "--check: $out"
ok
# ... and serves with it: one organisation registered, data in a temp folder
keys=$work/keys
"$root/usr/bin/kim" keygen jc.rheine --dir "$keys" >/dev/null || fail "installed kim keygen"
cp "$root/etc/kim/policy.cfg" "$work/policy.cfg"
{ cat "$root/etc/kim/kim.cfg"
  printf '    jc.rheine\n        role = agency\n        public_key = "%s"\n' \
      "$(sed -n 's/^ *public-key = "\(.*\)"$/\1/p' "$keys/jc.rheine.cert")"
} >"$work/kim.cfg"
"$root/usr/bin/kim-broker" --config "$work/kim.cfg" --data "$work/data" \
    --bind "ipc://$work/kim.sock" >"$work/broker.log" 2>&1 &
broker_pid=$!
export KIM_ENDPOINT="ipc://$work/kim.sock" KIM_BROKER_KEY="$work/data/keys/broker.cert"
deadline=$((SECONDS + 60))
until [ -f "$KIM_BROKER_KEY" ] && "$root/usr/bin/kim" status --cert "$keys/jc.rheine.cert_secret" \
        --timeout 500 >"$work/status" 2>&1; do
    kill -0 "$broker_pid" 2>/dev/null || fail "installed broker exited: $(cat "$work/broker.log")"
    [ "$SECONDS" -lt "$deadline" ] || fail "installed broker did not answer: $(cat "$work/status")"
    sleep 0.1
done
grep -q '"org":"jc.rheine"' "$work/status" || fail "status: $(cat "$work/status")"
[ "$(stat -c %a "$work/data/keys/broker.cert_secret")" = 600 ] || fail "broker secret key mode"
# the installed agent speaks for jc.rheine to the installed broker
agent_dir=$work/agent
mkdir -p "$agent_dir"
printf 'erp %s\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$agent_dir/tokens"
chmod 600 "$agent_dir/tokens"
cat >"$agent_dir/agent.cfg" <<CFG
agent
    org = jc.rheine
    data = $agent_dir/data
    cert = $keys/jc.rheine.cert_secret
broker
    endpoint = "ipc://$work/kim.sock"
    key_file = $work/data/keys/broker.cert
http
    port = 0
    port_file = $agent_dir/port
    tokens = $agent_dir/tokens
CFG
out=$("$root/usr/bin/kim-agent" --check --config "$agent_dir/agent.cfg" 2>&1) \
    || fail "installed kim-agent --check: $out"
"$root/usr/bin/kim-agent" --config "$agent_dir/agent.cfg" >"$work/agent.log" 2>&1 &
agent_pid=$!
token=$(awk '{print $2}' "$agent_dir/tokens")
deadline=$((SECONDS + 60))
until [ -s "$agent_dir/port" ] && curl -sf -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$(cat "$agent_dir/port")/v1/status" >"$work/agent.status" 2>/dev/null \
        && grep -q '"org":"jc.rheine"' "$work/agent.status"; do
    kill -0 "$agent_pid" 2>/dev/null || fail "installed agent exited: $(cat "$work/agent.log")"
    [ "$SECONDS" -lt "$deadline" ] || fail "installed agent did not answer: $(cat "$work/agent.log")"
    sleep 0.1
done
kill "$agent_pid"; wait "$agent_pid" || fail "installed agent exited $? on SIGTERM"
ok
kill "$broker_pid"; wait "$broker_pid" || fail "installed broker exited $? on SIGTERM"
broker_pid=
ok

# kim-dev: a program built with kim.pc links and runs
pc=$(find "$root/usr/lib" -name kim.pc | head -1)
cat >"$work/client.c" <<'C'
#include <stdio.h>
#include <kim/kim_error.h>
int main (void) { printf ("%s\n", kim_strerror (KIM_E_QUOTA)); return 0; }
C
flags=
[ "$sanitize" = ON ] && flags="-fsanitize=address,undefined"
# shellcheck disable=SC2046
cc $flags -o "$work/client" "$work/client.c" \
    $(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs kim) >"$work/cc.log" 2>&1 \
    || fail "building against kim-dev: $(cat "$work/cc.log")"
[ "$("$work/client")" = "recipient mailbox is full" ] || fail "kim-dev program: $("$work/client")"
ok

# the full install: a debootstrap'd Debian, apt, the maintainer scripts
if [ "${KIM_PACKAGE_ROOT:-0}" = 1 ]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/test_packages_root.sh" "$work/pkg" || exit 1
    ok
fi
printf 'test_packages: %d checks passed\n' "$checks"
