# deploy/lib.sh — shared by run.sh and test.sh: find the checkout, install
# what is missing from Debian's packages, build out of tree.

KIM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages the build and the tests need. clang brings libFuzzer (its runtime
# ships in libclang-rt-*-dev, a dependency of the clang package).
KIM_PACKAGES="build-essential cmake pkg-config libzmq3-dev libczmq-dev libmsgpack-dev
liblmdb-dev libsodium-dev libjansson-dev libsystemd-dev libmicrohttpd-dev scdoc
libcurl4-gnutls-dev curl python3-zmq python3-msgpack python3-nacl python3-pytest python3-lmdb"

kim_say() { printf '[kim] %s\n' "$*" >&2; }

kim_install() {
    local missing=() pkg
    for pkg in $KIM_PACKAGES "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    kim_say "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# kim_build DIR [cmake options...]
kim_build() {
    local dir=$1; shift
    cmake -S "$KIM_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    cmake --build "$dir" -j "$(nproc)" -- --no-print-directory >/dev/null \
        || cmake --build "$dir" -j 1 -- --no-print-directory
}

# kim_web_test_setup: what the browser test of kim-agent's web page
# (tests/web, ctest web.browser) needs: Debian's chromium, node with npm, and
# the node modules pinned in tests/web/package-lock.json (playwright-core
# drives /usr/bin/chromium and never downloads a browser). Only test.sh
# calls it: chromium is large and nothing else needs it.
kim_web_test_setup() {
    local dir="$KIM_ROOT/tests/web" node_pkgs=""
    command -v node >/dev/null && command -v npm >/dev/null || node_pkgs="nodejs npm"
    kim_install chromium fonts-dejavu-core $node_pkgs \
        || { kim_say "cannot install chromium/node: web.browser will be skipped"; return 0; }
    if [ ! -f "$dir/node_modules/.package-lock.json" ] \
       || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        kim_say "installing the browser test's node modules (npm ci in tests/web)"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund \
            --loglevel=error >&2) || kim_say "npm ci failed: web.browser will be skipped"
    fi
}
