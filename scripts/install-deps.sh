#!/usr/bin/env bash
# Installs, with apt-get, the Debian 12 packages that building, testing and
# running ngx_ipc need, and only those that are missing.
set -euo pipefail

packages=(
  nginx-light nginx-dev libnginx-mod-http-lua lua-resty-core
  g++ make cmake libgtest-dev python3-pytest curl clang libclang-rt-14-dev gnuplot-nox
  prometheus redis-server lua-nginx-redis
)

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
