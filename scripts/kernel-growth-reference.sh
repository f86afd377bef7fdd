#!/usr/bin/env bash
# The kernel's own cost of a routed pod's objects as pods accumulate, made by the reference
# tool (iproute2) without netns-holder: per pod a network namespace and a veth pair whose
# host end stays in a node namespace and whose pod end goes into the pod's. Batches of 100
# pods, each one `ip -batch` run; prints the time per pod of every batch (ms). With
# PAUSE=path/to/pause, each pod's namespace also gets a process (started with nsenter after
# its batch, not timed), as a pause holds each of ours. With ROUTES=1 the batch also does
# what the routed datapath does on the node for a pod: the host end up, a /32 route to the
# pod's address (10.200.0.0/16) on it from the node's address on lo (10.201.0.1) and a
# permanent neighbour entry for that address.
# With LO=1 each pod's `lo` is brought up after its batch (one `ip -n` each, not timed).
#
#   [PAUSE=target/pause/pause] scripts/kernel-growth-reference.sh [PODS]   (root; default 4000)
#
# Everything happens in a private mount namespace with a tmpfs on /run/netns and a node
# namespace of its own: the machine's /run/netns and network are never touched, and every
# namespace and link goes when the script ends. `make bench` runs it after bench_pods with
# ROUTES=1 LO=1 and the pause, so that the growth of the kernel's own work for a routed pod's
# objects is printed next to the daemon's 4000-pod run (last line: first batch against last).
set -euo pipefail

pods=${1:-4000}
if [ "$(id -u)" -ne 0 ]; then
    echo "kernel-growth-reference: needs root (network namespaces)" >&2
    exit 1
fi
if [ "${NH_REF_INNER:-}" != 1 ]; then
    exec env NH_REF_INNER=1 unshare --mount --propagation private -- "$0" "$pods"
fi

mkdir -p /run/netns
mount -t tmpfs -o mode=0755,size=16m nhref /run/netns
node=nhref-node
ip netns add "$node"
if [ "${ROUTES:-}" = 1 ]; then
    # The node's own address on lo, the source of every pod route, as the routed datapath
    # does (a route without one has the kernel look through every link for a source).
    nsenter --net="/run/netns/$node" -- ip link set lo up
    nsenter --net="/run/netns/$node" -- ip addr add 10.201.0.1/32 dev lo
fi
batch=$(mktemp)
pids=()
cleanup() {
    # Only the processes this script started.
    # The pause exits 0 on SIGTERM.
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$batch"
}
trap cleanup EXIT

for ((start = 0; start < pods; start += 100)); do
    : > "$batch"
    end=$((start + 100 < pods ? start + 100 : pods))
    for ((i = start; i < end; i++)); do
        echo "netns add p$i" >> "$batch"
        echo "link add h$i type veth peer name eth0 netns p$i" >> "$batch"
        if [ "${ROUTES:-}" = 1 ]; then
            address="10.200.$((i / 256)).$((i % 256))"
            echo "link set h$i up" >> "$batch"
            echo "route add $address/32 dev h$i src 10.201.0.1" >> "$batch"
            printf 'neigh add %s lladdr 0a:58:0a:c8:%02x:%02x dev h%d nud permanent\n' \
                "$address" $((i / 256)) $((i % 256)) "$i" >> "$batch"
        fi
    done
    t0=$(date +%s%N)
    # nsenter, not `ip -n`: `ip -n` gives ip a mount namespace of its own, and the pods'
    # namespace mounts made there would go with it (and the namespaces with them).
    nsenter --net="/run/netns/$node" -- ip -batch "$batch"
    t1=$(date +%s%N)
    per_pod_ns=$(((t1 - t0) / (end - start)))
    first_ns=${first_ns:-$per_pod_ns}
    last_ns=$per_pod_ns
    awk -v s="$start" -v e="$end" -v ns="$per_pod_ns" \
        'BEGIN { printf "pods %d-%d: %.3f ms per pod\n", s + 1, e, ns / 1e6 }'
    if [ "${LO:-}" = 1 ]; then
        for ((i = start; i < end; i++)); do ip -n "p$i" link set lo up; done
    fi
    if [ -n "${PAUSE:-}" ]; then
        for ((i = start; i < end; i++)); do
            nsenter --net="/run/netns/p$i" -- "$PAUSE" </dev/null >/dev/null 2>&1 &
            pids+=($!)
        done
    fi
done
links=$(ip -n "$node" -o link show | grep -c ' h[0-9]*@')
echo "at the end: $links host veths in the node namespace, $(find /run/netns -maxdepth 1 -name 'p*' | wc -l) pod namespaces"
awk -v f="$first_ns" -v l="$last_ns" -v n="$pods" \
    'BEGIN { printf "kernel-growth-reference: first batch %.3f ms per pod, last batch (up to pod %d) %.3f ms per pod: %.2fx\n", f / 1e6, n, l / 1e6, l / f }'
