#!/usr/bin/env bash
# The HAProxy scenario end to end on this machine, on loopback ports: etcd, two web backends,
# reconfd watching etcd, and HAProxy reloaded by reconfd. Needs etcd-server, etcd-client,
# haproxy, python3 and curl (Debian package names).
set -euo pipefail
cd "$(dirname "$0")"
# Debian installs haproxy and etcd under /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"
export ETCDCTL_API=3
etcd_url=http://127.0.0.1:22379
etcdctl=(etcdctl --endpoints "$etcd_url")
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f run/haproxy.pid ] && kill $(cat run/haproxy.pid) 2>/dev/null || true
  rm -rf "$work" run/haproxy.cfg run/haproxy.pid
}
trap cleanup EXIT

echo "== etcd on $etcd_url"
etcd --data-dir "$work/etcd" --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls http://127.0.0.1:22380 --initial-advertise-peer-urls http://127.0.0.1:22380 \
  --initial-cluster default=http://127.0.0.1:22380 >"$work/etcd.log" 2>&1 &
pids+=($!)
for name in web1 web2; do
  mkdir -p "$work/$name" && echo "$name" >"$work/$name/index.html"
done
echo "== web1 on 127.0.0.1:9001, web2 on 127.0.0.1:9002"
python3 -m http.server 9001 --bind 127.0.0.1 --directory "$work/web1" >/dev/null 2>&1 &
pids+=($!)
python3 -m http.server 9002 --bind 127.0.0.1 --directory "$work/web2" >/dev/null 2>&1 &
pids+=($!)
until "${etcdctl[@]}" endpoint health >/dev/null 2>&1; do sleep 0.2; done

"${etcdctl[@]}" put /proxy/port 8080 >/dev/null
echo "== building reconfd (cargo build --release; the first build takes several minutes)"
cargo build --release --manifest-path ../../Cargo.toml
echo "== reconfd --watch --backend etcd --node $etcd_url"
"${CARGO_TARGET_DIR:-../../target}/release/reconfd" --watch --confdir . --backend etcd --node "$etcd_url" &
pids+=($!)

ask() {
  sleep 1.5
  echo -n "   4 requests to http://127.0.0.1:8080/ answered by:"
  for _ in 1 2 3 4; do echo -n " $(curl -s http://127.0.0.1:8080/ || echo '-')"; done
  echo
}
echo "== put /proxy/frontend/web1"; "${etcdctl[@]}" put /proxy/frontend/web1 127.0.0.1:9001 >/dev/null; ask
echo "== put /proxy/frontend/web2"; "${etcdctl[@]}" put /proxy/frontend/web2 127.0.0.1:9002 >/dev/null; ask
echo "== del /proxy/frontend/web1"; "${etcdctl[@]}" del /proxy/frontend/web1 >/dev/null; ask
echo "== the rendered file:"; cat run/haproxy.cfg
