#!/usr/bin/env bash
# demo.sh: `make demo`, the main job for real, inside a throwaway node network namespace.
#
# Starts the netns-holder daemon in a "node" (a network namespace this script creates),
# creates two pods through its CLI, shows that each pod's namespace is held by our pause
# process, runs app containers (crun, falling back to runc) joined to the pods' namespaces,
# and shows the Kubernetes network model at work: localhost between the containers of one
# pod, pod to pod without NAT, node to pod. Then it removes the pods and everything else.
# The machine's own network is never touched: every address lives in namespaces this script
# creates. A trap removes containers, pods (through the API), the daemon, the node namespace
# and the temporary directory on exit, also after a failure or Ctrl-C.
#
# Needs root, iproute2, util-linux, iputils-ping, busybox-static (/bin/busybox), runc;
# crun is optional.
# NETNS_HOLDER_BIN: the netns-holder binary (default target/debug/netns-holder).
# PAUSE_BIN: the pause binary (default target/pause/pause).
# DEMO_DATAPATH: the daemon's datapath, bridge or routed (docs/datapath.md). Unset, the
# config leaves `datapath` out and the daemon takes its default for a node without pods:
# routed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NH_BIN="${NETNS_HOLDER_BIN:-$REPO_ROOT/target/debug/netns-holder}"
PAUSE_BIN="${PAUSE_BIN:-$REPO_ROOT/target/pause/pause}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

NODE="nhdemo-$$"                    # the node's network namespace (ip netns name)
POD_CIDR="10.222.0.0/24"            # private addresses, only inside our own namespaces
NODE_ADDR="10.222.0.1"              # the node's own address in it (bridge, or lo when routed)
DATAPATH="${DEMO_DATAPATH:-routed}"
case "$DATAPATH" in bridge|routed) ;; *) echo "DEMO_DATAPATH=$DATAPATH: bridge or routed" >&2; exit 2 ;; esac
POD_A="web-$$"                      # pod names
POD_B="api-$$"
PORT=8080
HOST_PORT=18080                     # the node port published to pod B's $PORT
ID="nhdemo-$$"                      # container id prefix

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    /'; }
die() { printf '\033[31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (namespaces, bind mounts, runc)"
[ -x "$NH_BIN" ] || die "netns-holder binary $NH_BIN not found: cargo build -p netns-holder (or set NETNS_HOLDER_BIN)"
[ -x "$PAUSE_BIN" ] || die "pause binary $PAUSE_BIN not found: cargo build -p pause --profile pause (or set PAUSE_BIN)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static"
command -v runc >/dev/null || die "runc not found"
"$NH_BIN" --help 2>/dev/null | grep -qw serve || die "$NH_BIN is not the netns-holder daemon (no 'serve' command)"
NH_BIN="$(realpath "$NH_BIN")"
PAUSE_BIN="$(realpath "$PAUSE_BIN")"

WORK="$(mktemp -d /tmp/nhdemo.XXXXXX)"
SOCKET="$WORK/api.sock"
NETNS_DIR="$WORK/netns"             # where the daemon bind-mounts the pod namespaces
RUNC_ROOT="$WORK/runc-state"        # private --root dirs: we never see other containers
CRUN_ROOT="$WORK/crun-state"
mkdir -p "$RUNC_ROOT" "$CRUN_ROOT"
NH=("$NH_BIN" --socket "$SOCKET")
DAEMON_PID=""
NODE_INODE=""
BACKGROUND=()                       # pids of the foreground runtimes we started

# Runtime commands, run in the node's network namespace on our private state dirs.
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

daemon_alive() { [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; }

# delete_containers: kill and delete every container in our runtimes' state dirs.
delete_containers() {
    local id
    for id in $(ls -A "$RUNC_ROOT" 2>/dev/null); do
        note "removing runc container $id"
        "${RUNC[@]}" kill "$id" KILL >/dev/null 2>&1
        "${RUNC[@]}" delete --force "$id" >/dev/null 2>&1
    done
    for id in $(ls -A "$CRUN_ROOT" 2>/dev/null); do
        note "removing crun container $id"
        "${CRUN[@]}" kill "$id" KILL >/dev/null 2>&1
        "${CRUN[@]}" delete --force "$id" >/dev/null 2>&1
    done
}

cleanup() {
    local status=$?
    set +e
    trap - ERR
    # Finish the cleanup even if another Ctrl-C comes (it takes a few seconds at most).
    trap '' INT TERM
    say "cleanup"
    local pid i path file
    # Container processes first, by the pid files the runtimes wrote: SIGKILL to the init of
    # a container's own PID namespace ends every process in it. (Only processes in another
    # PID namespace than ours: a container, never a recycled pid of the host.)
    for file in "$WORK"/*.pid; do
        [ -s "$file" ] || continue
        pid="$(cat "$file")"
        if [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/ns/pid")" != "$(readlink /proc/self/ns/pid)" ]; then
            note "killing container process $pid ($(basename "$file" .pid))"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    delete_containers
    for pid in "${BACKGROUND[@]}"; do
        # A foreground runtime exits by itself once its container is gone; else kill it.
        for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$pid" 2>/dev/null; then
            note "killing runtime process $pid"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    delete_containers   # those a runtime was still creating when we were interrupted
    if daemon_alive; then
        note "removing every pod through the API: $("${NH[@]}" gc 2>&1)"
        note "stopping the daemon (SIGTERM to pid $DAEMON_PID; its pods would stay, but there are none)"
        kill -TERM "$DAEMON_PID"
        for i in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.05; done
        kill -0 "$DAEMON_PID" 2>/dev/null && { note "daemon still running: SIGKILL"; kill -KILL "$DAEMON_PID"; }
    fi
    [ -n "$DAEMON_PID" ] && wait "$DAEMON_PID" 2>/dev/null
    # Pause processes the daemon could not remove (e.g. it died): ours carry this node's
    # namespace inode in their environment.
    if [ -n "$NODE_INODE" ]; then
        for path in /proc/[0-9]*; do
            pid=${path#/proc/}
            { tr '\0' '\n' <"$path/cmdline"; } 2>/dev/null | head -n 1 | grep -q '^netns-holder-pause:' || continue
            { tr '\0' '\n' <"$path/environ"; } 2>/dev/null | grep -qx "NETNS_HOLDER_NODE_NETNS=$NODE_INODE" || continue
            note "killing leftover pause process $pid"
            kill -KILL "$pid" 2>/dev/null
        done
    fi
    # Pod namespace bind mounts left behind, then the netns dir's own (shared) bind mount.
    for path in "$NETNS_DIR"/*; do
        [ -e "$path" ] || continue
        mountpoint -q "$path" && { note "unmounting leftover $path"; umount -l "$path"; }
    done
    while mountpoint -q "$NETNS_DIR" 2>/dev/null; do umount -l "$NETNS_DIR" || break; done
    if ip netns list | grep -qw "^$NODE"; then
        note "deleting node namespace $NODE (its bridge and host veths go with it)"
        ip netns delete "$NODE"
    fi
    if [ "$status" != 0 ] && [ -s "$WORK/daemon.log" ]; then
        note "the daemon's log (last 30 lines):"
        tail -n 30 "$WORK/daemon.log" | indent
    fi
    rm -rf "$WORK"
    note "removed $WORK"
    if [ "$status" = 0 ]; then
        say "demo finished: everything removed"
    else
        say "demo FAILED (status $status); everything removed"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Name the command that failed (set -e alone would exit silently).
trap 'printf "\033[31mdemo failed: line %s: %s (exit %s)\033[0m\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

# json_field JSON KEY: a string or number field of the one-line JSON the CLI prints.
json_field() {
    local re="\"$2\":\"?([^\",}]*)"
    [[ $1 =~ $re ]] || die "no field $2 in $1"
    printf '%s' "${BASH_REMATCH[1]}"
}

# first_ip JSON: the pod's first (IPv4) address, without the prefix length.
first_ip() {
    local re='"ips":\["([0-9.]+)/'
    [[ $1 =~ $re ]] || die "no IPv4 address in $1"
    printf '%s' "${BASH_REMATCH[1]}"
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

# wait_listen PID HEXADDR: waits until the process's network namespace has a TCP listener
# on HEXADDR:$PORT (as in /proc/net/tcp, e.g. 0100007F for 127.0.0.1).
wait_listen() {
    local pid=$1 addr=$2 i
    for i in $(seq 200); do
        grep -q "$addr:$(printf %04X "$PORT") 00000000:0000 0A" "/proc/$pid/net/tcp" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# write_config BUNDLE NETNS APP ARGS_JSON: an OCI config.json for a busybox app that joins
# the network namespace at NETNS; APP is its name (environment variable APP).
# No process.rlimits, no oomScoreAdj, no linux.resources: root here lacks CAP_SYS_RESOURCE.
write_config() {
    local bundle=$1 netns=$2 app=$3 args=$4
    mkdir -p "$bundle"
    cat >"$bundle/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": $args,
    "env": ["PATH=/bin", "APP=$app"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_NET_BIND_SERVICE"]
    },
    "noNewPrivileges": true
  },
  "root": { "path": "$WORK/rootfs", "readonly": true },
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
  ],
  "linux": {
    "namespaces": [
      { "type": "pid" }, { "type": "network", "path": "$netns" }, { "type": "ipc" },
      { "type": "uts" }, { "type": "mount" }
    ],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
}

# start_app NAME NETNS ARGS_JSON PIDVAR: runs an app container in the background.
start_app() {
    local name=$1 netns=$2 args=$3 var=$4 runtime_pid
    write_config "$WORK/$name" "$netns" "$name" "$args"
    "${APP[@]}" run --bundle "$WORK/$name" --pid-file "$WORK/$name.pid" "$ID-$name" \
        </dev/null >"$WORK/$name.log" 2>&1 &
    runtime_pid=$!
    BACKGROUND+=("$runtime_pid")
    wait_pidfile "$WORK/$name.pid" "$runtime_pid" "$var" \
        || die "$APP_RUNTIME did not start $name: $(cat "$WORK/$name.log")"
}

# ---------------------------------------------------------------------------------------
say "1. a throwaway node: network namespace $NODE"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
NODE_INODE="$(stat -c %i "/run/netns/$NODE")"
note "everything below happens inside it; the machine's own interfaces are not involved"

say "2. the daemon: netns-holder serve, inside the node (nsenter --net: bind mounts stay visible)"
cat >"$WORK/config.toml" <<EOF
socket = "$SOCKET"
state_dir = "$WORK/state"
netns_dir = "$NETNS_DIR"
pod_cidr_v4 = "$POD_CIDR"
pause_binary = "$PAUSE_BIN"
EOF
if [ -n "${DEMO_DATAPATH:-}" ]; then
    echo "datapath = \"$DATAPATH\"" >>"$WORK/config.toml"
else
    note "no datapath in the config: the daemon picks routed on a node without pods"
fi
indent <"$WORK/config.toml"
# setsid: a Ctrl-C on the terminal reaches this script, whose trap removes the pods through
# the API before it stops the daemon (setsid execs in place, so $! is the daemon's pid).
setsid nsenter --net="/run/netns/$NODE" "$NH_BIN" serve --config "$WORK/config.toml" \
    </dev/null >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for i in $(seq 300); do
    "${NH[@]}" status >/dev/null 2>&1 && break
    daemon_alive || die "the daemon exited at start: $(cat "$WORK/daemon.log")"
    sleep 0.05
done
"${NH[@]}" status >/dev/null || die "the daemon does not answer on $SOCKET: $(cat "$WORK/daemon.log")"
[ "/proc/$DAEMON_PID/exe" -ef "$NH_BIN" ] || die "pid $DAEMON_PID is not the daemon"
note "daemon pid $DAEMON_PID, in network namespace $(readlink "/proc/$DAEMON_PID/ns/net") (the node's)"
STATUS="$("${NH[@]}" status)"
note "status: $STATUS"
[[ $STATUS == *"\"datapath\":\"$DATAPATH\""* ]] || die "the daemon's datapath is not $DATAPATH: $STATUS"

say "3. two pods through the CLI: netns-holder pod create $POD_A; netns-holder pod create $POD_B --publish $HOST_PORT:$PORT/tcp"
A_JSON="$("${NH[@]}" pod create "$POD_A")"
B_JSON="$("${NH[@]}" pod create "$POD_B" --publish "$HOST_PORT:$PORT/tcp")"
note "$A_JSON"
note "$B_JSON"
A_IP="$(first_ip "$A_JSON")"
B_IP="$(first_ip "$B_JSON")"
A_NETNS="$(json_field "$A_JSON" netns)"
B_NETNS="$(json_field "$B_JSON" netns)"
note "pod $POD_A: $A_IP, namespace bind-mounted at $A_NETNS"
note "pod $POD_B: $B_IP, namespace bind-mounted at $B_NETNS"

say "4. each pod's namespace is held by our pause process, started by the daemon"
for json in "$A_JSON" "$B_JSON"; do
    name="$(json_field "$json" name)"
    pid="$(json_field "$json" pause_pid)"
    netns="$(json_field "$json" netns)"
    [ "/proc/$pid/exe" -ef "$PAUSE_BIN" ] || die "pause $pid of $name does not run $PAUSE_BIN"
    held="$(readlink "/proc/$pid/ns/net")"
    mounted="net:[$(stat -c %i "$netns")]"
    [ "$held" = "$mounted" ] || die "pause $pid of $name holds $held, the bind mount is $mounted"
    ppid="$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status")"
    note "pod $name: pause pid $pid (parent $ppid = the daemon), state $(awk '/^State:/ { print $2 }' "/proc/$pid/status")"
    note "    /proc/$pid/exe -> $(readlink "/proc/$pid/exe") ($(stat -L -c %s "/proc/$pid/exe") bytes: our static pause)"
    note "    argv[0]: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    note "    its network namespace $held == the bind mount's $mounted"
done

say "5. app containers join the pods' namespaces by path (the bind mounts from the API)"
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/www/cgi-bin"
cp "$BUSYBOX" "$WORK/rootfs/bin/busybox"
ln -s busybox "$WORK/rootfs/bin/sh"
# A CGI that answers with the server app's name and the client address it sees.
cat >"$WORK/rootfs/www/cgi-bin/whoami" <<'EOF'
#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "$APP answers: you come from $REMOTE_ADDR"
EOF
chmod 755 "$WORK/rootfs/www/cgi-bin/whoami"
if command -v crun >/dev/null; then
    write_config "$WORK/probe" "$A_NETNS" probe '["/bin/busybox", "true"]'
    if "${CRUN[@]}" run --bundle "$WORK/probe" "$ID-probe" </dev/null >"$WORK/probe.log" 2>&1; then
        APP=("${CRUN[@]}")
        APP_RUNTIME=crun
        note "the apps run under crun (in a private mount namespace with a pure cgroup2 /sys/fs/cgroup)"
    else
        note "crun failed here, so the apps run under runc instead. crun said:"
        indent <"$WORK/probe.log"
    fi
else
    note "crun is not installed, so the apps run under runc"
fi

start_app web-a "$A_NETNS" \
    "[\"/bin/busybox\", \"httpd\", \"-f\", \"-vv\", \"-p\", \"127.0.0.1:$PORT\", \"-h\", \"/www\"]" WEB_A_PID
wait_listen "$WEB_A_PID" 0100007F || die "web-a does not listen: $(cat "$WORK/web-a.log")"
note "web-a ($APP_RUNTIME, pid $WEB_A_PID) in pod $POD_A: HTTP on 127.0.0.1:$PORT only, namespace $(readlink "/proc/$WEB_A_PID/ns/net")"
start_app web-b "$B_NETNS" \
    "[\"/bin/busybox\", \"httpd\", \"-f\", \"-vv\", \"-p\", \"0.0.0.0:$PORT\", \"-h\", \"/www\"]" WEB_B_PID
wait_listen "$WEB_B_PID" 00000000 || die "web-b does not listen: $(cat "$WORK/web-b.log")"
note "web-b ($APP_RUNTIME, pid $WEB_B_PID) in pod $POD_B: HTTP on 0.0.0.0:$PORT (every address of the pod), namespace $(readlink "/proc/$WEB_B_PID/ns/net")"

say "6. a client container in pod $POD_A: its view of the pod, localhost to web-a, and pod $POD_B"
# busybox wget resolves names through glibc NSS, which a static binary cannot load in this
# bare root: speak HTTP/1.0 with nc instead and print the body.
cat >"$WORK/rootfs/client-a.sh" <<EOF
get() { printf 'GET /cgi-bin/whoami HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 "\$1" $PORT | busybox tr -d '\\r' | busybox sed '1,/^\$/d'; }
echo "network namespace: \$(busybox readlink /proc/self/ns/net)"
busybox ip -4 addr show eth0
echo "--- GET http://127.0.0.1:$PORT/cgi-bin/whoami (web-a: same pod, over loopback):"
get 127.0.0.1
echo "--- GET http://$B_IP:$PORT/cgi-bin/whoami (web-b: pod $POD_B):"
get $B_IP
EOF
write_config "$WORK/client-a" "$A_NETNS" client-a '["/bin/sh", "/client-a.sh"]'
"${APP[@]}" run --bundle "$WORK/client-a" "$ID-client-a" </dev/null >"$WORK/client-a.log" 2>&1 \
    || die "client-a failed: $(cat "$WORK/client-a.log")"
indent <"$WORK/client-a.log"
grep -q "inet $A_IP/" "$WORK/client-a.log" || die "client-a does not see $A_IP on eth0"
grep -qx "web-a answers: you come from 127.0.0.1" "$WORK/client-a.log" \
    || die "web-a did not answer over localhost"
grep -qx "web-b answers: you come from $A_IP" "$WORK/client-a.log" \
    || die "web-b did not see the client as $A_IP"
note "localhost: client-a and web-a are separate containers in one network namespace"
note "pod to pod: web-b saw the request come from $A_IP, pod $POD_A's own IP: no NAT"
note "web-b's own access log (httpd -vv, stderr of the container):"
indent <"$WORK/web-b.log"
grep -q "^$A_IP:" "$WORK/web-b.log" || die "web-b's log does not show $A_IP"

if [ "$DATAPATH" = bridge ]; then
    say "7. node to pod and pod to node: ping (the pods' gateway is the node bridge's address)"
    note "node bridge: $(ip -n "$NODE" -br addr show nh0)"
else
    say "7. node to pod and pod to node: ping (routed: no bridge; the node's address is on lo)"
    note "node lo: $(ip -n "$NODE" -br addr show lo)"
    note "node routes to the pods (proto 79): $(ip -n "$NODE" route show proto 79 | tr '\n' ';')"
fi
for ip in "$A_IP" "$B_IP"; do
    note "node -> pod $ip:"
    nsenter --net="/run/netns/$NODE" ping -c 1 -W 2 "$ip" | grep -E 'bytes from|transmitted' | indent
done
re='"gateways":\["([^"]+)"'
[[ $A_JSON =~ $re ]] || die "no gateway in $A_JSON"
GATEWAY="${BASH_REMATCH[1]}"
note "pod $POD_A's gateway: $GATEWAY"
if [ "$DATAPATH" = bridge ]; then
    [ "$GATEWAY" = "$NODE_ADDR" ] || die "gateway $GATEWAY is not the bridge's $NODE_ADDR"
else
    [ "$GATEWAY" = 169.254.1.1 ] || die "routed gateway $GATEWAY is not 169.254.1.1"
fi
note "pod $POD_A -> node $NODE_ADDR (netns-holder exec $POD_A -- ping ...):"
"${NH[@]}" exec "$POD_A" -- ping -c 1 -W 2 "$NODE_ADDR" | grep -E 'bytes from|transmitted' | indent

say "7b. a host port: node port $HOST_PORT forwarded to pod $POD_B port $PORT (nftables, no listener on the node)"
host_get() {
    printf 'GET /cgi-bin/whoami HTTP/1.0\r\n\r\n' \
        | nsenter --net="/run/netns/$NODE" /bin/busybox nc -w 5 "$1" "$HOST_PORT" \
        | tr -d '\r' | sed '1,/^$/d'
}
for addr in 127.0.0.1 "$NODE_ADDR"; do
    answer="$(host_get "$addr")"
    note "node -> $addr:$HOST_PORT: $answer"
    [[ $answer == "web-b answers: you come from "* ]] || die "host port $HOST_PORT on $addr did not reach web-b"
done

say "8. netns-holder pod ls"
"${NH[@]}" pod ls | indent

say "9. netns-holder check: the kernel matches the daemon's records"
CHECK="$("${NH[@]}" check)" || die "check found drift: $CHECK"
note "$CHECK"
[[ $CHECK == *'"drift":false'* ]] || die "check reports drift: $CHECK"

say "10. stop the apps, then remove the pods through the API"
"${APP[@]}" kill "$ID-web-a" KILL
"${APP[@]}" kill "$ID-web-b" KILL
for pid in "${BACKGROUND[@]}"; do wait "$pid" 2>/dev/null || true; done
BACKGROUND=()
"${APP[@]}" delete --force "$ID-web-a" >/dev/null 2>&1 || true
"${APP[@]}" delete --force "$ID-web-b" >/dev/null 2>&1 || true
LEFT="$("${APP[@]}" list --quiet)"
[ -z "$LEFT" ] || die "containers left: $LEFT"
note "containers left: none"
for pod in "$POD_A" "$POD_B"; do
    OUT="$("${NH[@]}" pod rm "$pod")"
    note "netns-holder pod rm $pod: $OUT"
    [[ $OUT == *'"removed":true'* ]] || die "pod rm $pod did not remove it: $OUT"
done
PODS="$("${NH[@]}" pod ls --json)"
note "pods left: $PODS"
[ "$PODS" = "[]" ] || die "pods left: $PODS"
STATUS="$("${NH[@]}" status)"
note "status: $STATUS"
[[ $STATUS == *'"pods":0'* && $STATUS == *'"allocated":0'* ]] || die "addresses still allocated: $STATUS"
# The namespace pool's veth pairs (host ends nhv<12 hex>, no carrier) are no pod's once
# every pod is removed (a pod that adopted one has it retired, as nhx<hex>): they wait for
# the next create and go with the daemon.
node_links() {
    ip -n "$NODE" -o link show | awk -F': ' '{ split($2, n, "@"); if (!(n[1] ~ /^nhv[0-9a-f]+$/ && length(n[1]) == 15)) printf "%s ", n[1] }'
}
pool_pairs() { ip -n "$NODE" -o link show | awk -F': ' '{ split($2, n, "@") } n[1] ~ /^nhv[0-9a-f]+$/ && length(n[1]) == 15' | wc -l; }
LINKS="$(node_links)"
# A removed pod's host veth is renamed nhx<hex> (one adopted from the pool keeps its nhv
# name), marked with the daemon's deletion group (0x6e68646c, "nhdl") and deleted in a
# background batch (the remove does not wait for the kernel's unregister); give that batch
# up to 5 s.
retiring() { ip -n "$NODE" -o link show group 1852335212 | wc -l; }
for _ in $(seq 50); do
    [[ $LINKS == *nhx* ]] || [ "$(retiring)" -gt 0 ] || break
    sleep 0.1
    LINKS="$(node_links)"
done
note "node links: $LINKS(the bridge stays, if any; the host veths are gone; besides them the pool's $(pool_pairs) veth pairs made ahead)"
if [ "$DATAPATH" = bridge ]; then EXPECTED_LINKS="lo nh0 "; else EXPECTED_LINKS="lo "; fi
[ "$LINKS" = "$EXPECTED_LINKS" ] || die "host veths left: $LINKS"
# The pool's pairs have their pod ends down until a create adopts them, so no carrier: a
# pool-named host veth with one is an adopted pair that no pod names, left behind.
adopted_left() { ip -n "$NODE" -o link show | awk -F': ' '{ split($2, n, "@") } n[1] ~ /^nhv[0-9a-f]+$/ && length(n[1]) == 15 && /LOWER_UP/ { printf "%s ", n[1] }'; }
[ -z "$(adopted_left)" ] || die "adopted pool pairs left (carrier, no pod): $(adopted_left)"
MOUNTS="$(ls -A "$NETNS_DIR")"
[ -z "$MOUNTS" ] || die "namespace bind mounts left: $MOUNTS"
note "bind mounts left in $NETNS_DIR: none"
for json in "$A_JSON" "$B_JSON"; do
    pid="$(json_field "$json" pause_pid)"
    if { tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q '^netns-holder-pause:'; then
        die "pause $pid is still running"
    fi
done
note "the pause processes are gone"

