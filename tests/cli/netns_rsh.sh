#!/bin/sh
# Open MPI's remote launcher (--mca plm_rsh_agent) for "hosts" that are network namespaces of
# this machine (tests/cli/test_cli_multihost.cpp): runs the command Open MPI would run over ssh
# inside the namespace named for the host in DP_NETNS_MAP ("10.1.2.1=nsA,10.1.2.2=nsB"), and logs
# "HOST NAMESPACE" to DP_NETNS_LOG so the test can see that the remote rank went there.
while [ "${1#-}" != "$1" ]; do shift; done  # ssh-style options, if any
host=$1
shift
ns=
for pair in $(echo "$DP_NETNS_MAP" | tr ',' ' '); do
  [ "${pair%%=*}" = "$host" ] && ns=${pair#*=}
done
[ -n "$ns" ] || { echo "netns_rsh.sh: no namespace for host $host in DP_NETNS_MAP" >&2; exit 1; }
[ -n "$DP_NETNS_LOG" ] && echo "$host $ns" >> "$DP_NETNS_LOG"
exec ip netns exec "$ns" sh -c "$*"
