#!/bin/bash
# scripts/first-packet-neighbours.sh (make bench): first-packet RTT pod -> node on a routed
# veth with proxy ARP (default proxy_delay), proxy ARP with proxy_delay 0, and permanent
# neighbour entries on both sides (what the routed datapath does). Root; own namespaces only.
set -u
A=nhxa$$; P=nhxp$$
cleanup() { ip netns del $A 2>/dev/null; ip netns del $P 2>/dev/null; }
trap cleanup EXIT
setup() {
  cleanup
  ip netns add $A; ip netns add $P
  ip -n $A link set lo up; ip -n $P link set lo up
  ip -n $A link add nhxh address ee:ee:ee:ee:ee:ee type veth peer name eth0 address 0a:58:0a:63:00:02 netns $P
  ip -n $A addr add 10.99.0.1/32 dev lo
  ip -n $A link set nhxh up
  ip -n $P addr add 10.99.0.2/32 dev eth0
  ip -n $P link set eth0 up
  ip -n $P route add default via 169.254.1.1 dev eth0 onlink
  ip -n $A route add 10.99.0.2/32 dev nhxh src 10.99.0.1
  # An uplink with a default route, as a node has (proxy ARP answers only for targets
  # routed out of another interface).
  ip -n $A link add nhxu type veth peer name nhxu1
  ip -n $A link set nhxu up; ip -n $A link set nhxu1 up
  ip -n $A addr add 192.0.2.2/24 dev nhxu
  ip -n $A route add default via 192.0.2.1 dev nhxu
  ip netns exec $A sysctl -qw net.ipv4.ip_forward=1
}
first_rtt() { # prints the RTT in ms of one ping P -> node, caches flushed before (not permanent ones)
  ip -n $P neigh flush dev eth0 2>/dev/null
  ip -n $A neigh flush dev nhxh 2>/dev/null
  ip netns exec $P ping -c 1 -W 2 10.99.0.1 | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p'
}
run() { local label=$1; shift; local out=(); for i in $(seq 1 ${N:-15}); do out+=("$(first_rtt)"); done
  printf '%s\n' "${out[@]}" | sort -g | awk -v l="$label" '{a[NR]=$1} END {printf "%-40s median %s ms, max %s ms (n=%d)\n", l, a[int((NR+1)/2)], a[NR], NR}'; }
setup; ip netns exec $A sysctl -qw net.ipv4.conf.nhxh.proxy_arp=1
run "proxy ARP, proxy_delay default ($(ip netns exec $A sysctl -n net.ipv4.neigh.nhxh.proxy_delay))"
ip netns exec $A sysctl -qw net.ipv4.neigh.nhxh.proxy_delay=0
run "proxy ARP, proxy_delay 0"
setup
ip -n $P neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent
ip -n $A neigh replace 10.99.0.2 lladdr 0a:58:0a:63:00:02 dev nhxh nud permanent
run "permanent neighbours both sides"
