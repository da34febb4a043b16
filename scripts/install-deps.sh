#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages that building, testing and
# running ngx_ipc need, and only those that are missing.
#
#   install-deps.sh               everything (Debian 12, the CI machine)
#   install-deps.sh --nginx-tests what building the module and running t/
#                                 need: the Debian 13 root of
#                                 scripts/trixie.sh gets only these
set -euo pipefail

# The few names that differ between releases.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$codename" in
bookworm) nginx=nginx-light promtool=prometheus clang_rt=libclang-rt-14-dev ;;
*)        nginx=nginx       promtool=promtool   clang_rt=libclang-rt-dev ;;
esac

# the module's build and t/ (promtool checks the status page's output)
nginx_tests=(
  "$nginx" nginx-dev libnginx-mod-http-lua lua-resty-core
  g++ make python3-pytest curl "$promtool" redis-server lua-nginx-redis
  redis-sentinel openssl
)
# the core's tests, sanitizers, fuzzing, bench charts, the Debian 13 root
others=(
  cmake libgtest-dev clang "$clang_rt" gnuplot-nox debootstrap
)

packages=("${nginx_tests[@]}")
[ "${1:-}" = --nginx-tests ] || packages+=("${others[@]}")

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
