"""Replicated partitions: the cluster map in a control plane (etcd), log shipping by the leader.

See ``docs/replication.md``. Modules: :mod:`~kvstore.replication.control` (the control plane's
interface and its in-memory model), :mod:`~kvstore.replication.etcd` (the control plane on etcd's
v3 JSON gateway), :mod:`~kvstore.replication.local_etcd` (a private etcd for local clusters and
tests), :mod:`~kvstore.replication.rules` (the pure replication rules),
:mod:`~kvstore.replication.placement` (the live cluster map).
"""
