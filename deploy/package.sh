#!/usr/bin/env bash
# deploy/package.sh — build the Debian packages (kim-broker, kim, kim-dev, kim-agent)
# from a release build in build/pkg, with CPack's DEB generator. The .deb
# files land in build/pkg/; install them with
#   apt-get install ./build/pkg/kim-broker_*.deb ./build/pkg/kim_*.deb
# See docs/operations.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kim_install dpkg-dev scdoc
build="$KIM_ROOT/build/pkg"
kim_say "release build in $build"
kim_build "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DKIM_TESTS=OFF
(cd "$build" && cpack -G DEB -B "$build" >/dev/null)
ls -1 "$build"/*.deb
