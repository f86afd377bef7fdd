#!/bin/bash
# scripts/create-growth-profile.sh: where a routed create's time goes at a few pods and at
# many (issue 14: creates get slower as pods accumulate). Not part of `make bench` (it is a
# diagnosis, not a figure). Root; release build (NETNS_HOLDER_BIN, PAUSE_BIN). One routed
# daemon in its own node namespace; pods created through the CLI; at each of MARKS
# (default "50 1500") pods: 20 creates untimed-traced (wall time), 20 under `strace -f -c`
# of the daemon, 10 under `strace -f -T -tt` and 20 under `perf record -a -g`; results in
# OUT (default a fresh temp dir). Raises the machine's neighbour tables for the run and puts
# them back; kills only the daemon and pause processes it started. EXTRA_CONFIG is appended
# to the daemon's config (e.g. 'mtu = 1500', which skips the per-create route dump).
set -euo pipefail
BIN=${NETNS_HOLDER_BIN:?set NETNS_HOLDER_BIN (target/release/netns-holder)}
PAUSE=${PAUSE_BIN:?set PAUSE_BIN (target/pause/pause)}
MARKS=${MARKS:-"50 1500"}
D=${OUT:-$(mktemp -d /tmp/nh-growth.XXXXXX)}
mkdir -p "$D"
NS=nhgrowth$$
ip netns add $NS
ip -n $NS link set lo up
saved=()
for f in ipv4 ipv6; do for t in 2 3; do
  saved+=("/proc/sys/net/$f/neigh/default/gc_thresh$t=$(cat /proc/sys/net/$f/neigh/default/gc_thresh$t)")
done; done
DPID=
pause_pids() {
  "$BIN" --socket "$D/api.sock" pod ls --json 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(str(p["pause_pid"]) for p in json.load(sys.stdin) if p.get("pause_pid")))' \
    >"$D/pause_pids" || true
}
cleanup() {
  pause_pids
  [ -n "$DPID" ] && kill -9 "$DPID" 2>/dev/null || true
  sleep 0.5
  while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$D/pause_pids"
  grep " $D/netns" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip netns del $NS || true
  for s in "${saved[@]}"; do echo "${s#*=}" >"${s%%=*}"; done
}
trap cleanup EXIT
for f in ipv4 ipv6; do
  echo 8698 >/proc/sys/net/$f/neigh/default/gc_thresh2
  echo 17396 >/proc/sys/net/$f/neigh/default/gc_thresh3
done
cat >"$D/config.toml" <<C
socket = "$D/api.sock"
state_dir = "$D/state"
netns_dir = "$D/netns"
bridge = "nh0"
pause_binary = "$PAUSE"
pod_cidr_v4 = "10.244.0.0/20"
datapath = "routed"
${EXTRA_CONFIG:-}
C
nsenter --net=/run/netns/$NS -- "$BIN" serve --config "$D/config.toml" >"$D/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do [ -S "$D/api.sock" ] && break; sleep 0.1; done
cli() { "$BIN" --socket "$D/api.sock" "$@" >/dev/null; }
i=0
for mark in $MARKS; do
  while [ $i -lt "$mark" ]; do cli pod create p$i; i=$((i + 1)); done
  echo "== at $i pods (results in $D)"
  t0=$(date +%s%N)
  for k in $(seq 40); do cli pod create q$mark-$k; done
  t1=$(date +%s%N)
  echo "40 creates through the CLI, untraced: $(((t1 - t0) / 40000)) us each"
  strace -f -c -w -o "$D/strace_c_$mark.txt" -p $DPID 2>/dev/null & SP=$!
  sleep 0.5
  for k in $(seq 20); do cli pod create r$mark-$k; done
  kill -INT $SP; wait $SP || true
  strace -f -T -tt -o "$D/strace_T_$mark.txt" -p $DPID 2>/dev/null & SP=$!
  sleep 0.5
  for k in $(seq 10); do cli pod create s$mark-$k; done
  kill -INT $SP; wait $SP || true
  perf record -q -o "$D/perf_$mark.data" -a -g -- \
    bash -c "for k in \$(seq 20); do '$BIN' --socket '$D/api.sock' pod create t$mark-\$k >/dev/null; done"
  i=$((i + 90))
done
