#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine, then runs every check and test:
# formatting, clippy, unit tests and the integration tests that drive the real binary, some of
# them against real servers (etcd, HAProxy) that the tests start on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || {
    echo "$tool is missing: install Rust with rustup (https://rustup.rs), components rustfmt and clippy" >&2
    exit 1
  }
done

# systemd brings systemd-analyze, with which tests/package.rs verifies the packaged unit;
# iproute2 and util-linux bring `ip` and `unshare`, with which tests/srv_records.rs gives its
# name server a network namespace of its own.
packages=(haproxy etcd-server openssl redis-server zookeeper nats-server chromium systemd iproute2 util-linux)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian puts some server binaries outside a normal user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
