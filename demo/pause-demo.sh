#!/usr/bin/env bash
# pause-demo.sh: the interim `make demo`, until the node daemon exists.
#
# Builds a throwaway "node" (a network namespace of its own), starts our pause under runc
# as a pod sandbox with its own network namespace, wires the pod to the node with a veth
# pair, joins app containers (crun, falling back to runc) to the pod's network namespace,
# and shows what they share. Everything lives in namespaces this script creates; the
# machine's own network is never touched. A trap removes containers, namespaces and temp
# dirs on exit, also after a failure or Ctrl-C.
#
# Needs root, runc, busybox-static (/bin/busybox), iproute2, util-linux; crun is optional.
# PAUSE_BIN: the pause binary (default: target/pause/pause in the repository;
# build it with `cargo build -p pause --profile pause`).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAUSE_BIN="${PAUSE_BIN:-$REPO_ROOT/target/pause/pause}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

NODE="nhdemo-$$"                    # the node's network namespace (ip netns name)
NODE_VETH="nhdemo$$"                # the node's end of the pod's veth pair
NODE_ADDR="10.213.0.1/24"           # private addresses, only inside our own namespaces
POD_ADDR="10.213.0.2/24"
PORT=8080
TOKEN="hello-from-app-a-$$"
ID="nhdemo-$$"                      # container id prefix

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf '\033[31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (namespaces, runc)"
[ -x "$PAUSE_BIN" ] || die "pause binary $PAUSE_BIN not found: cargo build -p pause --profile pause (or set PAUSE_BIN)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static"
command -v runc >/dev/null || die "runc not found"

WORK="$(mktemp -d /tmp/nhdemo.XXXXXX)"
RUNC_ROOT="$WORK/runc-state"        # private --root dirs: we never see other containers
CRUN_ROOT="$WORK/crun-state"
mkdir -p "$RUNC_ROOT" "$CRUN_ROOT"
BACKGROUND=()                       # pids of the foreground runtimes we started

# Runtime commands, run on the node (in the node's network namespace) on our state dirs.
# Arrays, not functions: `"${RUNC[@]}" run ... &` makes $! the runtime's own pid (nsenter,
# unshare and sh all exec), so cleanup can always reach the process it started.
RUNC=(nsenter --net="/run/netns/$NODE" runc --root "$RUNC_ROOT")
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    CRUN=(nsenter --net="/run/netns/$NODE" crun --root "$CRUN_ROOT")
else
    # crun refuses hybrid cgroup hosts: give it a private mount namespace whose
    # /sys/fs/cgroup is a pure cgroup2 mount (the host's own mounts stay as they are).
    CRUN=(nsenter --net="/run/netns/$NODE" unshare --mount --propagation private -- sh -c
        'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@"'
        crun --root "$CRUN_ROOT")
fi
APP=("${RUNC[@]}")                  # the apps' runtime: crun if it works here, else runc
APP_RUNTIME=runc

cleanup() {
    local status=$?
    set +e
    say "cleanup"
    local id pid i
    for id in $(ls -A "$RUNC_ROOT" 2>/dev/null); do
        note "removing leftover runc container $id"
        "${RUNC[@]}" kill "$id" KILL >/dev/null 2>&1
        "${RUNC[@]}" delete --force "$id" >/dev/null 2>&1
    done
    for id in $(ls -A "$CRUN_ROOT" 2>/dev/null); do
        note "removing leftover crun container $id"
        "${CRUN[@]}" kill "$id" KILL >/dev/null 2>&1
        "${CRUN[@]}" delete --force "$id" >/dev/null 2>&1
    done
    for pid in "${BACKGROUND[@]}"; do
        # A foreground runtime exits by itself once its container is gone; else kill it.
        for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$pid" 2>/dev/null; then
            note "killing runtime process $pid"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if ip netns list | grep -qw "^$NODE"; then
        note "deleting node namespace $NODE (and the node end of the veth pair with it)"
        ip netns delete "$NODE"
    fi
    rm -rf "$WORK"
    note "removed $WORK"
    if [ "$status" = 0 ]; then say "demo finished: everything removed"; else say "demo FAILED (status $status); everything removed"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# write_config BUNDLE ROOTFS UID GID READONLY NETNS_JSON ARGS_JSON: an OCI config.json.
# No process.rlimits, no oomScoreAdj, no linux.resources: root here lacks CAP_SYS_RESOURCE.
write_config() {
    local bundle=$1 rootfs=$2 uid=$3 gid=$4 readonly=$5 netns=$6 args=$7
    cat >"$bundle/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": $uid, "gid": $gid },
    "args": $args,
    "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_NET_BIND_SERVICE"]
    },
    "noNewPrivileges": true
  },
  "root": { "path": "$rootfs", "readonly": $readonly },
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
  ],
  "linux": {
    "namespaces": [ { "type": "pid" }, $netns, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" } ],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
}

# wait_pidfile FILE RUNTIME_PID VAR: waits for a runtime's --pid-file and stores the container
# pid in VAR (no command substitution: a subshell would hold off Ctrl-C until it returns).
wait_pidfile() {
    local file=$1 runtime_pid=$2 var=$3 i
    for i in $(seq 200); do
        if [ -s "$file" ]; then printf -v "$var" '%s' "$(cat "$file")"; return 0; fi
        kill -0 "$runtime_pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---------------------------------------------------------------------------------------
say "1. a throwaway node: network namespace $NODE"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
note "the node is a network namespace of its own; the machine's interfaces are not involved"

say "2. the pod sandbox: our pause under runc, from an empty read-only root, as uid/gid 65535"
mkdir -p "$WORK/pause/rootfs"
cp "$PAUSE_BIN" "$WORK/pause/rootfs/pause"
note "pause rootfs holds only: $(ls -A "$WORK/pause/rootfs") ($(stat -c %s "$PAUSE_BIN") bytes)"
write_config "$WORK/pause" rootfs 65535 65535 true '{ "type": "network" }' '["/pause"]'
"${RUNC[@]}" run --bundle "$WORK/pause" --pid-file "$WORK/pause.pid" "$ID-pause" \
    </dev/null >"$WORK/pause.log" 2>&1 &
PAUSE_RUNTIME=$!
BACKGROUND+=("$PAUSE_RUNTIME")
wait_pidfile "$WORK/pause.pid" "$PAUSE_RUNTIME" PAUSE_PID || die "runc did not start the pause: $(cat "$WORK/pause.log")"
for i in $(seq 100); do   # the pause reaches its blocking wait (state S), or it failed
    grep -q '^State:.*S' "/proc/$PAUSE_PID/status" 2>/dev/null && break
    kill -0 "$PAUSE_RUNTIME" 2>/dev/null || die "the pause exited at once: $(cat "$WORK/pause.log")"
    sleep 0.05
done
POD_NETNS="/proc/$PAUSE_PID/ns/net"
note "pause pid $PAUSE_PID; $(grep -E '^(Uid|Gid)' "/proc/$PAUSE_PID/status" | tr '\t\n' '  ')"
note "pod network namespace: $(readlink "$POD_NETNS") (this shell: $(readlink /proc/self/ns/net))"
"${RUNC[@]}" list

say "3. wire the pod to the node: veth $NODE_VETH (node, $NODE_ADDR) <-> eth0 (pod, $POD_ADDR)"
ip -n "$NODE" link add "$NODE_VETH" type veth peer name eth0 netns "$PAUSE_PID"
ip -n "$NODE" addr add "$NODE_ADDR" dev "$NODE_VETH"
ip -n "$NODE" link set "$NODE_VETH" up
nsenter -t "$PAUSE_PID" -n ip addr add "$POD_ADDR" dev eth0
nsenter -t "$PAUSE_PID" -n ip link set eth0 up
nsenter -t "$PAUSE_PID" -n ip link set lo up
# The kernel reports the veth carrier asynchronously (linkwatch): wait for "state UP".
for i in $(seq 100); do
    nsenter -t "$PAUSE_PID" -n ip -o link show eth0 | grep -q 'state UP' && break
    sleep 0.05
done
note "the node reaches the pod (the pause holds the namespace; nothing runs in it but the pause):"
nsenter --net="/run/netns/$NODE" "$BUSYBOX" ping -c 1 -W 2 "${POD_ADDR%/*}" | sed 's/^/    /'

say "4. app containers join the pod's network namespace by path ($POD_NETNS)"
mkdir -p "$WORK/app-rootfs/bin"
cp "$BUSYBOX" "$WORK/app-rootfs/bin/busybox"
ln -s busybox "$WORK/app-rootfs/bin/sh"
JOIN="{ \"type\": \"network\", \"path\": \"$POD_NETNS\" }"
if command -v crun >/dev/null; then
    mkdir -p "$WORK/probe"
    write_config "$WORK/probe" "$WORK/app-rootfs" 0 0 true "$JOIN" '["/bin/busybox", "true"]'
    if "${CRUN[@]}" run --bundle "$WORK/probe" "$ID-probe" </dev/null >"$WORK/probe.log" 2>&1; then
        APP=("${CRUN[@]}")
        APP_RUNTIME=crun
        note "apps run under crun (in a private mount namespace with a pure cgroup2 /sys/fs/cgroup)"
    else
        note "crun failed, so the apps run under runc instead. crun said:"
        sed 's/^/      /' "$WORK/probe.log"
    fi
else
    note "crun is not installed, so the apps run under runc"
fi

mkdir -p "$WORK/app-a" "$WORK/app-b"
# App A: a TCP server on 127.0.0.1:$PORT only, answering every connection with a token.
write_config "$WORK/app-a" "$WORK/app-rootfs" 0 0 true "$JOIN" \
    "[\"/bin/busybox\", \"nc\", \"-ll\", \"-p\", \"$PORT\", \"127.0.0.1\", \"-e\", \"/bin/busybox\", \"echo\", \"$TOKEN\"]"
"${APP[@]}" run --bundle "$WORK/app-a" --pid-file "$WORK/app-a.pid" "$ID-app-a" \
    </dev/null >"$WORK/app-a.log" 2>&1 &
APP_A_RUNTIME=$!
BACKGROUND+=("$APP_A_RUNTIME")
wait_pidfile "$WORK/app-a.pid" "$APP_A_RUNTIME" APP_A_PID || die "$APP_RUNTIME did not start app A: $(cat "$WORK/app-a.log")"
note "app A ($APP_RUNTIME, pid $APP_A_PID) listens on 127.0.0.1:$PORT, network namespace $(readlink "/proc/$APP_A_PID/ns/net")"
for i in $(seq 200); do
    grep -q "0100007F:$(printf %04X "$PORT") 00000000:0000 0A" "/proc/$PAUSE_PID/net/tcp" && break
    sleep 0.05
done

say "5. ip addr, seen from the pod's holder (nsenter into the pause's namespace)"
nsenter -t "$PAUSE_PID" -n ip addr | sed 's/^/    /'

say "6. ip addr, seen from inside app B, and B's localhost round trip to app A"
note "app B runs: busybox ip addr; busybox nc 127.0.0.1 $PORT"
write_config "$WORK/app-b" "$WORK/app-rootfs" 0 0 true "$JOIN" \
    "[\"/bin/sh\", \"-c\", \"echo \\\"net namespace: \$(busybox readlink /proc/self/ns/net)\\\"; busybox ip addr; echo '--- 127.0.0.1:$PORT answered:'; busybox nc -w 5 127.0.0.1 $PORT </dev/null\"]"
"${APP[@]}" run --bundle "$WORK/app-b" "$ID-app-b" </dev/null >"$WORK/app-b.log" 2>&1 \
    || die "app B failed: $(cat "$WORK/app-b.log")"
sed 's/^/    /' "$WORK/app-b.log"
grep -qx "$TOKEN" "$WORK/app-b.log" || die "app B did not receive the token $TOKEN"
note "same interfaces and addresses as the pod (busybox prints the veth peer as eth0@eth0 where"
note "iproute2 prints eth0@if2: the same link); app A's token came back over the pod's loopback"

say "7. stop: app A (SIGKILL: nc as PID 1 ignores SIGTERM), then the pause (SIGTERM)"
"${APP[@]}" kill "$ID-app-a" KILL
status=0; wait "$APP_A_RUNTIME" || status=$?
note "app A ended with status $status (128 + 9 = killed)"
"${RUNC[@]}" kill "$ID-pause" TERM
status=0; wait "$PAUSE_RUNTIME" || status=$?
[ "$status" = 0 ] || die "the pause exited with status $status on SIGTERM"
note "the pause exited with status 0 on SIGTERM"
BACKGROUND=()
note "runc containers left: $("${RUNC[@]}" list --quiet | wc -l)"
[ "$APP_RUNTIME" = runc ] || note "crun containers left: $("${CRUN[@]}" list --quiet | wc -l)"
