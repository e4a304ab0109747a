#!/usr/bin/env bash
# Two "hosts" on one machine: runs CMD_A as node 0 and CMD_B as node 1, each in a network namespace of its own,
# joined by a veth pair, at the same time, and waits for both.
#
#   tests/dist/netns.sh CMD_A [CMD_B]
#
# Each CMD is one shell command line (run with `bash -c`, in the current directory, with the current environment),
# so it may contain `--`, redirections and variables; CMD_B defaults to CMD_A. Each node also gets
#   NETNS_NODE       0 or 1
#   NETNS_ADDR       its own address: 198.18.0.1 (node 0) or 198.18.0.2 (node 1), a /15 on the veth
#   NETNS_PEER_ADDR  the other node's address
#   NETNS_IFACE      the name of its veth interface
# (198.18.0.0/15 is the range reserved for benchmarking, RFC 2544: it clashes with no real network.) A namespace
# has only lo and the veth: no route elsewhere, its own TCP port space, and the host name of the machine (which may
# resolve to 127.0.0.1: a program that binds what the host name resolves to cannot reach the other node).
#
# Output: the commands' stdout and stderr pass through, unprefixed and interleaved (redirect inside CMD to keep them
# apart); this script's own lines go to stderr and start with "netns.sh: ". The first one names the namespaces:
#   netns.sh: node 0 in namespace kolos-PID-a (198.18.0.1 on kolosPIDa), node 1 in kolos-PID-b (198.18.0.2 on kolosPIDb)
#
# Exit status: 0 when both commands exited 0; otherwise the status of the first node to fail (124 when it ran past
# the time limit). When one node fails, the other is sent SIGTERM (SIGKILL 5 s later): a peer would otherwise wait
# for its timeout. 77 (the automake "skip" status) when network namespaces cannot be created
# here (not root, no CAP_SYS_ADMIN, no `ip`); 2 on bad usage; 1 when the rest of the set-up fails.
#
# Time limit: NETNS_TIMEOUT seconds (default 120) for each command, then SIGTERM and SIGKILL 5 s later.
# Clean-up: on every exit (success, failure, time-out, SIGINT/SIGTERM/SIGHUP) every process left in the two
# namespaces is SIGKILLed and both namespaces are deleted (which removes the veth pair). Needs root; changes
# nothing outside the two namespaces.
set -uo pipefail

say() { echo "netns.sh: $*" >&2; }
usage() {
  say "usage: netns.sh CMD_A [CMD_B]   (node 0 runs CMD_A, node 1 runs CMD_B; NETNS_TIMEOUT=seconds, default 120)"
  exit 2
}
(($# == 1 || $# == 2)) || usage
CMD_A=$1
CMD_B=${2:-$1}
TIMEOUT=${NETNS_TIMEOUT:-120}
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { say "NETNS_TIMEOUT=\"$TIMEOUT\": expected a whole number of seconds > 0"; exit 2; }

NS_A=kolos-$$-a
NS_B=kolos-$$-b
VETH_A=kolos$$a  # interface names: at most 15 characters
VETH_B=kolos$$b
ADDR_A=198.18.0.1
ADDR_B=198.18.0.2
PID_A=
PID_B=

# shellcheck disable=SC2317 # used by cleanup
ns_exists() { ip netns list 2>/dev/null | awk -v ns="$1" '$1 == ns { found = 1 } END { exit !found }'; }

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  # From here bash's "Killed" notices about the jobs killed below go nowhere; this script's own lines go to fd 3.
  exec 3>&2 2>/dev/null
  local ns pids
  for ns in "$NS_A" "$NS_B"; do
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null)
    # shellcheck disable=SC2086 # one pid per word
    [ -n "$pids" ] && kill -KILL $pids
    ip netns del "$ns" || echo "netns.sh: could not delete namespace $ns" >&3
  done
  # Still in this namespace when the set-up stopped before moving it.
  ip link show "$VETH_A" >/dev/null 2>&1 && ip link del "$VETH_A"
  # Reap what was started here (killed above when it was still running).
  [ -n "$PID_A$PID_B" ] && wait ${PID_A:+"$PID_A"} ${PID_B:+"$PID_B"}
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM
trap 'say "hung up"; exit 129' HUP

command -v ip >/dev/null || { say "cannot create network namespaces: the ip command (iproute2) is missing"; exit 77; }
if ! err=$(ip netns add "$NS_A" 2>&1); then
  say "cannot create network namespaces (ip netns add: ${err:-failed}; needs root or CAP_SYS_ADMIN)"
  exit 77
fi

step() { "$@" || { say "set-up failed: $*"; exit 1; }; }
step ip netns add "$NS_B"
step ip link add "$VETH_A" type veth peer name "$VETH_B"
step ip link set "$VETH_A" netns "$NS_A"
step ip link set "$VETH_B" netns "$NS_B"
step ip -n "$NS_A" addr add "$ADDR_A/15" dev "$VETH_A"
step ip -n "$NS_B" addr add "$ADDR_B/15" dev "$VETH_B"
for ns in "$NS_A" "$NS_B"; do step ip -n "$ns" link set lo up; done
step ip -n "$NS_A" link set "$VETH_A" up
step ip -n "$NS_B" link set "$VETH_B" up
say "node 0 in namespace $NS_A ($ADDR_A on $VETH_A), node 1 in $NS_B ($ADDR_B on $VETH_B)"

# ip netns exec → env → timeout: $! is the pid of `timeout`, which passes SIGTERM on to the command.
ip netns exec "$NS_A" env NETNS_NODE=0 NETNS_ADDR=$ADDR_A NETNS_PEER_ADDR=$ADDR_B NETNS_IFACE="$VETH_A" \
  timeout -k 5 "$TIMEOUT" bash -c "$CMD_A" &
PID_A=$!
ip netns exec "$NS_B" env NETNS_NODE=1 NETNS_ADDR=$ADDR_B NETNS_PEER_ADDR=$ADDR_A NETNS_IFACE="$VETH_B" \
  timeout -k 5 "$TIMEOUT" bash -c "$CMD_B" &
PID_B=$!

report() {  # report NODE STATUS
  if (($2 == 124)); then say "node $1 ran past NETNS_TIMEOUT=$TIMEOUT s"
  elif (($2 != 0)); then say "node $1 exited with status $2"; fi
}
# The first node to finish; if it failed, stop the other (which would otherwise wait for its peer's timeout).
wait -n -p first "$PID_A" "$PID_B"
rc=$?
if [ "$first" = "$PID_A" ]; then node=0 other=1 other_pid=$PID_B; else node=1 other=0 other_pid=$PID_A; fi
report "$node" "$rc"
((rc != 0)) && kill -TERM "$other_pid" 2>/dev/null
wait "$other_pid"
other_rc=$?
((rc == 0)) && report "$other" "$other_rc"
PID_A=
PID_B=
((rc != 0)) && exit "$rc"
exit "$other_rc"
