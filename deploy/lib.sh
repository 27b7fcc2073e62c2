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
