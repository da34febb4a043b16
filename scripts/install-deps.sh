#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages that building, testing and
# running ngx_ipc need, and only those that are missing.
#
#   install-deps.sh                   everything (Debian 12, the CI machine)
#   install-deps.sh --nginx-tests     what building the module and running
#                                     t/ need (scripts/trixie.sh's root)
#   install-deps.sh --deb             what `make deb` needs to build the
#                                     Debian package (debian/control's
#                                     Build-Depends, dpkg-buildpackage,
#                                     lintian)
#   install-deps.sh --installed-tests what t/ needs besides nginx and the
#                                     module, for the roots where the
#                                     package is installed and tested
set -euo pipefail

# The few names that differ between releases.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$codename" in
bookworm) nginx=nginx-light promtool=prometheus clang_rt=libclang-rt-14-dev ;;
*)        nginx=nginx       promtool=promtool   clang_rt=libclang-rt-dev ;;
esac

# t/'s tools (promtool checks the status page's output)
test_tools=(
  python3-pytest curl "$promtool" redis-server redis-sentinel openssl
)
# the module's build and t/
nginx_tests=(
  "$nginx" nginx-dev libnginx-mod-http-lua lua-resty-core
  lua-cjson g++ make lua-nginx-redis "${test_tools[@]}"
)
# the package's build: debian/control's Build-Depends, dpkg-buildpackage,
# and lintian, which `make deb` runs on what it built
deb=(
  build-essential debhelper dpkg-dev nginx-dev libnginx-mod-http-lua lua-resty-core g++ make
  lintian
)
# the core's tests, sanitizers, fuzzing, bench charts, the Debian roots
# (and ps, which scripts/package-checks.sh runs beside them)
others=(
  cmake libgtest-dev clang "$clang_rt" gnuplot-nox debootstrap procps
)

case "${1:-}" in
--nginx-tests)     packages=("${nginx_tests[@]}") ;;
--deb)             packages=("${deb[@]}") ;;
--installed-tests) packages=("${test_tools[@]}") ;;
"")                packages=("${nginx_tests[@]}" "${deb[@]}" "${others[@]}") ;;
*)
  sed -n 's/^#   //p' "$0" >&2
  exit 2
  ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
