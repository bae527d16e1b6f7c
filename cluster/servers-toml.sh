# cluster/servers-toml.sh — sourced by the scripts that start causeway in
# front of the local cluster (bench.sh, scale.sh, icount.sh).

# servers_toml PRIMARY_PORT [REPLICA_PORT...]: the [primary], [[replicas]]
# and [[users]] (app / app) sections of a causeway config for the cluster.
servers_toml() {
  local primary=$1 k=0 port
  shift
  printf '[primary]\nname = "primary"\nhost = "127.0.0.1"\nport = %d\n' "$primary"
  for port in "$@"; do
    printf '\n[[replicas]]\nname = "replica%d"\nhost = "127.0.0.1"\nport = %d\n' "$k" "$port"
    k=$((k + 1))
  done
  printf '\n[[users]]\nname = "app"\npassword = "app"\n'
}
