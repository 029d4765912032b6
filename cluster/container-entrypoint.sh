#!/bin/sh
# Entry point of the kvstore image (cluster/Containerfile): run one node or one coordinator.
#   kvstore-entrypoint node n1            or   KVSTORE_ROLE=node KVSTORE_ID=n1 kvstore-entrypoint
#   kvstore-entrypoint coordinator c1     or   KVSTORE_ROLE=coordinator KVSTORE_ID=c1 ...
# KVSTORE_CONFIG: the cluster file (default /etc/kvstore/cluster.toml).
# The process replaces this shell (exec), so it is PID 1 of the container and gets SIGTERM
# directly on `stop`: a node flushes its buffered writes before it exits.
set -eu

role="${1:-${KVSTORE_ROLE:-}}"
id="${2:-${KVSTORE_ID:-}}"
config="${KVSTORE_CONFIG:-/etc/kvstore/cluster.toml}"
python="${KVSTORE_PYTHON:-python}"

case "$role" in
    node | storage_node) module=kvstore.storage_node ;;
    coordinator) module=kvstore.coordinator ;;
    *)
        echo "kvstore-entrypoint: give the role and id: 'node <id>' or 'coordinator <id>'" \
            "(or set KVSTORE_ROLE and KVSTORE_ID); got role '${role}'" >&2
        exit 2
        ;;
esac
if [ -z "$id" ]; then
    echo "kvstore-entrypoint: no id: '$role <id>' (an id from $config), or set KVSTORE_ID" >&2
    exit 2
fi
exec "$python" -m "$module" --config "$config" --id "$id"
