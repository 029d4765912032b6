"""Every limit and protocol time constant of the store, named once, with its unit in its name.

Theory of operation
-------------------
Nothing in the store is unbounded: keys, values, transactions, condition trees, update action
lists, read-round retries and background work per tick all have a maximum here. Modules import
the constant they enforce; nothing else hard-codes a number. Where a limit is configurable
(``txn_ops_max`` per cluster), the constant here is the default and ``*_CEILING`` bounds what
configuration may ask for. Relations between limits are asserted at import so an edit that
breaks one fails loudly at start-up rather than at run time.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "KEY_BYTES_MAX",
    "INTERNAL_KEY_BYTES_MAX",
    "VALUE_BYTES_MAX",
    "VALUE_DEPTH_MAX",
    "TXN_OPS_MAX_DEFAULT",
    "TXN_OPS_MAX_CEILING",
    "TXN_BYTES_MAX",
    "PATH_BYTES_MAX",
    "PATH_SEGMENTS_MAX",
    "CONDITION_NODES_MAX",
    "CONDITION_DEPTH_MAX",
    "UPDATE_ACTIONS_MAX",
    "TOKEN_BYTES_MAX",
    "READ_KEYS_MAX",
    "READ_ROUNDS_MAX",
    "PARTITIONS_DEFAULT",
    "PARTITIONS_MAX",
    "MAX_CLOCK_SKEW_MS",
    "INTENT_STALE_MS",
    "INTENT_WAIT_MS",
    "INTENT_WAITERS_MAX",
    "PREPARE_DEADLINE_MS",
    "LEDGER_DECISION_DEADLINE_MS",
    "IDEMPOTENCY_WINDOW_MS",
    "LEDGER_RETENTION_MS",
    "TOMBSTONE_RETENTION_MS",
    "RPC_TIMEOUT_MS",
    "DECISION_ATTEMPTS_MAX",
    "RESEND_INTERVAL_MS",
    "FINISH_DEADLINE_MS",
    "GC_ITEMS_PER_TICK_MAX",
    "STALE_INTENTS_PER_TICK_MAX",
    "SCAN_PAGE_ITEMS_MAX",
    "SNAPSHOT_WINDOW_MS",
    "SNAPSHOT_PIN_MS",
    "SNAPSHOT_VERSIONS_MAX",
    "BACKUP_PAGE_ITEMS",
    "BACKUP_PAGES_IN_FLIGHT_MAX",
    "BACKUP_PAGE_RETRY_MS",
    "RESTORE_CALLS_IN_FLIGHT_MAX",
    "RESTORE_ROWS_MAX",
    "BACKUP_FILE_INSERT_ROWS",
    "BACKUP_FILE_COMMIT_ROWS",
    "BACKUP_FILE_READ_ROWS",
    "BACKUP_FILE_CACHE_KIB",
    "BACKUP_FILE_PROGRESS_ITEMS",
    "RPC_PROTOCOL_VERSION",
    "RPC_FRAME_BYTES_MAX",
    "RPC_CALLS_IN_FLIGHT_MAX",
    "RPC_SERVER_CALLS_IN_FLIGHT_MAX",
    "RPC_CONNECT_TIMEOUT_MS",
    "RPC_BACKOFF_BASE_MS",
    "RPC_BACKOFF_MAX_MS",
    "RPC_FAILURE_LOG_INTERVAL_MS",
    "PARTITION_QUEUE_MAX",
    "NODE_REQUESTS_IN_PROGRESS_MAX",
    "FLUSH_WRITES_MAX",
    "STAGE_ON_LOOP_ROWS_MAX",
    "FLUSH_INLINE_COMMIT_US_MAX",
    "FLUSH_INLINE_ROWS_MAX",
    "FLUSH_COMMIT_SAMPLES",
    "SQLITE_CACHE_KIB",
    "ITEM_CACHE_ROWS_MAX",
    "MAINTAIN_INTERVAL_MS",
    "ACTOR_TICK_MS",
    "BACKGROUND_ACTORS_MAX",
    "API_BODY_BYTES_MAX",
    "SCAN_LIMIT_DEFAULT",
    "API_TOKEN_NAME_CHARS_MAX",
    "TOKEN_FILE_RELOAD_INTERVAL_MS",
    "RETRY_AFTER_S",
    "COORDINATOR_TXNS_IN_FLIGHT_MAX",
    "MEMORY_TRIM_INTERVAL_MS",
    "LOOP_LAG_PROBE_MS",
    "LOOP_LAG_TARGET_MS",
    "LOOP_LAG_INTERVAL_MS",
    "API_REQUESTS_IN_FLIGHT_MAX",
    "API_REQUESTS_IN_FLIGHT_CEILING",
    "API_LISTEN_BACKLOG",
    "RETRY_AFTER_MAX_S",
    "RETRY_AFTER_WINDOW_MS",
    "FANOUT_CALLS_MAX",
    "CONFLICT_RETRIES_MAX",
    "CONFLICT_BACKOFF_BASE_MS",
    "INSPECT_ROWS_MAX",
    "RECOVER_TXNS_MAX",
    "CLOSE_DRAIN_MS",
    "LOCAL_NODES_MAX",
    "LOCAL_COORDINATORS_MAX",
    "LOCAL_READY_TIMEOUT_MS",
    "LOCAL_STOP_TIMEOUT_MS",
    "LOCAL_LOCK_WAIT_MS",
    "LOCAL_PROBE_TIMEOUT_MS",
    "LOCAL_RATE_SAMPLE_MS",
    "LOCAL_POLL_MAX_MS",
    "LOCAL_LOG_TAIL_LINES",
    "LOCAL_LOG_FOLLOW_BYTES_MAX",
    "LOCAL_FOLLOW_INTERVAL_MS",
    "LOCAL_WATCH_INTERVAL_MS",
    "LOCAL_DETACH_WAIT_MS",
    "KVCTL_INPUT_BYTES_MAX",
    "SDK_TIMEOUT_MS_DEFAULT",
    "SDK_ATTEMPTS_MAX",
    "SDK_RUN_ATTEMPTS_MAX",
    "SDK_BACKOFF_BASE_MS",
    "SDK_BACKOFF_CAP_MS",
    "SDK_RETRY_BUDGET_WINDOW_MS",
    "SDK_RETRY_BUDGET_SLOTS",
    "SDK_RETRY_BUDGET_PERCENT",
    "SDK_RETRY_BUDGET_FLOOR",
    "SDK_TOKEN_DRAWS_MAX",
    "SDK_HTTP_CONNECTIONS_MAX",
    "SDK_CONNECT_TIMEOUT_MS",
    "SDK_ATTEMPT_MIN_MS",
    "SDK_SYNC_CLOSE_TIMEOUT_MS",
]

# --- data model (DESIGN section 3) ---------------------------------------------------------
KEY_BYTES_MAX: Final = 1024  # UTF-8 bytes of a key; 1..KEY_BYTES_MAX.
# UTF-8 bytes of a key of the store's own namespace (first character U+0000: the DynamoDB
# endpoint's tables and items, kvstore/dynamodb/keys.py): a sort key of 1,024 bytes takes up to
# 2,048 bytes in its order-preserving text, after a 53-character prefix.
INTERNAL_KEY_BYTES_MAX: Final = 4096
VALUE_BYTES_MAX: Final = 400 * 1024  # msgpack-encoded bytes of one value (DynamoDB's 400 KB).
VALUE_DEPTH_MAX: Final = 64  # nesting of lists/objects; deeper values are refused, not recursed.
PATH_BYTES_MAX: Final = 1024  # a dotted attribute path.
PATH_SEGMENTS_MAX: Final = 32  # attribute names in one path.
CONDITION_NODES_MAX: Final = 256  # nodes in one condition tree (all/any/not count).
CONDITION_DEPTH_MAX: Final = 16  # nesting of all/any/not.
UPDATE_ACTIONS_MAX: Final = 256  # set/remove/add/append actions in one update.
TOKEN_BYTES_MAX: Final = 64  # an idempotency token, 1..TOKEN_BYTES_MAX printable ASCII.

# --- transactions (DESIGN sections 6 and 8) ------------------------------------------------
TXN_OPS_MAX_DEFAULT: Final = 100  # operations in one write transaction, by default.
TXN_OPS_MAX_CEILING: Final = 1000  # the most a cluster may be configured to allow.
TXN_BYTES_MAX: Final = 4 * 1024 * 1024  # encoded size of one transaction's operations.
READ_KEYS_MAX: Final = TXN_OPS_MAX_CEILING  # keys in one read-only transaction.
# Read rounds before a read-only transaction gives up (conflict). Read rounds wait for intents on
# the nodes (INTENT_WAIT_MS), so what ends a read now is keys changing between two rounds: with
# a transfer landing on one of a bank read's keys in about 3 round trips of 4 (the chaos bank
# workload), 4 rounds (3 comparisons) left 3% of reads failed after the retries; 6 rounds, 0.3%.
READ_ROUNDS_MAX: Final = 6

# --- partitioning (DESIGN section 7) -------------------------------------------------------
PARTITIONS_DEFAULT: Final = 16
PARTITIONS_MAX: Final = 4096

# --- time (DESIGN sections 4-6); all in milliseconds ----------------------------------------
MAX_CLOCK_SKEW_MS: Final = 500  # a node refuses timestamps further ahead of its clock.
INTENT_STALE_MS: Final = 5_000  # an intent older than this is resolved through its ledger record.
# A request stopped only by other transactions' intents it may wait for (lower timestamps; any,
# for reads and singleton writes: kvstore/storage_node/intent_wait.py) is parked on its node
# until they clear, for at most this long, then stepped anyway. Well below RPC_TIMEOUT_MS.
INTENT_WAIT_MS: Final = 200
PREPARE_DEADLINE_MS: Final = 2_000  # the coordinator stops waiting for votes after this.
LEDGER_DECISION_DEADLINE_MS: Final = 25_000  # PREPARING older than this may be CANCELLED by anyone.
IDEMPOTENCY_WINDOW_MS: Final = 10 * 60 * 1000  # a token's outcome is kept this long.
LEDGER_RETENTION_MS: Final = IDEMPOTENCY_WINDOW_MS  # completed ledger records are kept this long.
TOMBSTONE_RETENTION_MS: Final = 60_000  # per-key tombstones fold into the watermark after this.
RPC_TIMEOUT_MS: Final = 1_000  # a single internal call's deadline.
DECISION_ATTEMPTS_MAX: Final = 5  # ledger CAS attempts before the coordinator says OutcomeUnknown.
RESEND_INTERVAL_MS: Final = 200  # commit/cancel messages are re-sent at this interval.
FINISH_DEADLINE_MS: Final = (
    10_000  # past this the coordinator answers and leaves the rest to recovery.
)

# --- background work and pages --------------------------------------------------------------
GC_ITEMS_PER_TICK_MAX: Final = 1_000  # tombstones / ledger records / tokens expired per tick.
STALE_INTENTS_PER_TICK_MAX: Final = 100  # stale intents a partition reports per tick.
SCAN_PAGE_ITEMS_MAX: Final = 1_000  # items in one scan page.

# --- snapshot reads, backups and restores (docs/backup.md) ------------------------------------
# How far back a read-only transaction's ``at`` may reach: a partition keeps the versions its
# writes replaced for this long (the reads' window), and longer only for a backup's pinned ``at``.
SNAPSHOT_WINDOW_MS: Final = 10_000
# A backup's ``at`` stays pinned on a partition this long after its last page there.
SNAPSHOT_PIN_MS: Final = 60_000
# Replaced versions one partition keeps; beyond it the oldest go and the window shrinks (a backup
# that needed one fails with SnapshotTooOld rather than read a wrong version).
SNAPSHOT_VERSIONS_MAX: Final = 200_000
BACKUP_PAGE_ITEMS: Final = 1_000  # items kvctl asks of one partition per page of a backup.
# Pages a backup has in flight after every partition's first (the rest of the store's capacity
# stays with its clients).
BACKUP_PAGES_IN_FLIGHT_MAX: Final = 2
# How long a backup asks a refused page again (an intent at or below its timestamp pending, a
# node restarting or changing leader) before it gives up.
BACKUP_PAGE_RETRY_MS: Final = 30_000
RESTORE_ROWS_MAX: Final = 1_000  # rows in one ``restore`` message.
RESTORE_CALLS_IN_FLIGHT_MAX: Final = 4  # restore messages kvctl has in flight.
# The backup file (kvstore/backup/file.py): rows handed to sqlite-utils per insert batch (it cuts
# a batch further to fit SQLite's bound-variable limit), rows per write transaction (a
# transaction ends after the ``add`` call that reaches it), rows fetched per cursor step when
# reading, the SQLite page cache of a backup file's connection (a bound on the memory a backup
# or a verify takes), and the items between two progress callbacks.
BACKUP_FILE_INSERT_ROWS: Final = 10_000
BACKUP_FILE_COMMIT_ROWS: Final = 100_000
BACKUP_FILE_READ_ROWS: Final = 1_000
BACKUP_FILE_CACHE_KIB: Final = 32 * 1024
BACKUP_FILE_PROGRESS_ITEMS: Final = 10_000

# --- internal RPC (DESIGN section 2) ----------------------------------------------------------
RPC_PROTOCOL_VERSION: Final = 1  # checked in the handshake; bump on any incompatible change.
RPC_FRAME_BYTES_MAX: Final = 2 * TXN_BYTES_MAX  # one WebSocket message; refused before decoding.
RPC_CALLS_IN_FLIGHT_MAX: Final = 4_096  # calls a client has outstanding on one connection.
RPC_SERVER_CALLS_IN_FLIGHT_MAX: Final = 4_096  # calls a server runs at once for one connection.
RPC_CONNECT_TIMEOUT_MS: Final = 1_000  # connecting plus the handshake.
RPC_BACKOFF_BASE_MS: Final = 10  # first reconnect delay (full jitter below the cap).
RPC_BACKOFF_MAX_MS: Final = 1_000  # reconnect delay cap.
RPC_FAILURE_LOG_INTERVAL_MS: Final = 30_000  # a peer that stays unreachable: one log line per.

# --- storage node (DESIGN section 8) -------------------------------------------------------
PARTITION_QUEUE_MAX: Final = 2_048  # requests waiting on one partition; beyond: Overloaded.
NODE_REQUESTS_IN_PROGRESS_MAX: Final = 8_192  # requests waiting on one node; beyond: Overloaded.
INTENT_WAITERS_MAX: Final = 1_024  # requests parked behind intents on one node; beyond: no wait.
FLUSH_WRITES_MAX: Final = 4_096  # a node's buffered row writes that flush without waiting.
STAGE_ON_LOOP_ROWS_MAX: Final = 256  # larger flushes stage their rows on the flush thread too.
# A flush of at most STAGE_ON_LOOP_ROWS_MAX rows commits on the event loop itself while the
# fastest of the partition's last FLUSH_COMMIT_SAMPLES COMMITs (fsync included) took less than
# FLUSH_INLINE_COMMIT_US_MAX: the loop then stalls about that long per flush instead of handing
# the commit to the flush thread and back, which costs more CPU than a fast fsync (docs/bench.md).
# The fastest, not an average: on a busy machine a commit's wall time includes waiting for a CPU
# after the fsync, which says nothing about the disk. Slower disks use the thread.
FLUSH_INLINE_COMMIT_US_MAX: Final = 1_000
# Only a flush of at most this many rows (a quiet node) commits on the loop: a bigger one means
# requests keep arriving, and committing on the flush thread lets the loop run them during the
# fsync (one group commit per node serializes every partition's flushes). 4, not 16: with the
# coordinator in the node, the loop has work to do during every fsync; at 32 clients 16 rows
# still committed inline and cost 0.5 more fsyncs per transfer (docs/bench.md, issue 18).
FLUSH_INLINE_ROWS_MAX: Final = 4
FLUSH_COMMIT_SAMPLES: Final = 32
SQLITE_CACHE_KIB: Final = 2_048  # page cache per SQLite connection.
ITEM_CACHE_ROWS_MAX: Final = 2_048  # decoded durable item rows kept per partition (hot keys).
MAINTAIN_INTERVAL_MS: Final = 200  # background maintenance tick of a node.
# A running actor core is ticked at least this often (its deadlines tick it sooner), so a clock
# that jumps is noticed within one tick.
ACTOR_TICK_MS: Final = 100
BACKGROUND_ACTORS_MAX: Final = 1_024  # stale-intent resolutions and recoveries a node runs at once.
INSPECT_ROWS_MAX: Final = 1_000  # intents and ledger records one `inspect` call lists, each.
RECOVER_TXNS_MAX: Final = 1_000  # stuck transactions one `kvctl recover` drives.

# --- public API (docs/api.md) ----------------------------------------------------------------
# The HTTP JSON API of a coordinator: what a request may carry and how often the token file is
# looked at. A body holds one transaction's operations plus JSON overhead, hence the margin.
API_BODY_BYTES_MAX: Final = 2 * TXN_BYTES_MAX  # a request body; larger is 413 before reading.
SCAN_LIMIT_DEFAULT: Final = 100  # items in a scan page when the caller does not say.
API_TOKEN_NAME_CHARS_MAX: Final = 64  # the name of an API token, 1..API_TOKEN_NAME_CHARS_MAX.
TOKEN_FILE_RELOAD_INTERVAL_MS: Final = 1_000  # the API token file is stat-ed at most this often.
RETRY_AFTER_S: Final = 1  # the Retry-After of a 503 (the SDK adds its own jittered backoff).
# An overloaded coordinator raises the Retry-After of its refusals up to this while it refuses
# more requests than it admits (runtime/admission.py, RetryAfter), once a window.
RETRY_AFTER_MAX_S: Final = 16
RETRY_AFTER_WINDOW_MS: Final = 1_000
# Requests one coordinator process serves at once (every route but health, metrics and the
# OpenAPI document); one more is refused with Overloaded before its body is read. About 0.2 s of
# this machine's capacity (2,500 mixed ops/s), well inside RPC_TIMEOUT_MS: admitted work never
# waits long enough for its own internal deadlines to expire (docs/bench.md, overload).
# The cluster file's api_requests_in_flight_max overrides it, up to the ceiling.
API_REQUESTS_IN_FLIGHT_MAX: Final = 512
API_REQUESTS_IN_FLIGHT_CEILING: Final = 65_536
# Connections the kernel queues for a coordinator before it accepts them (capped by the kernel's
# net.core.somaxconn). aiohttp's default of 128 drops the SYNs of a burst of new clients, which
# then wait seconds for TCP's retransmission and time out without ever being refused.
API_LISTEN_BACKLOG: Final = 4_096

# --- coordinator (DESIGN section 6) ---------------------------------------------------------
COORDINATOR_TXNS_IN_FLIGHT_MAX: Final = 4_096  # transactions running at once; beyond: Overloaded.
# The loop-lag gate (runtime/admission.py): a timer every LOOP_LAG_PROBE_MS measures how late
# the event loop handles ready work; later than the target for a whole interval refuses new
# work (Overloaded) until it is back under. Well below RPC_TIMEOUT_MS, so admitted work is
# answered before its internal calls' deadlines.
MEMORY_TRIM_INTERVAL_MS: Final = 10_000  # a server process returns free heap pages this often.
LOOP_LAG_PROBE_MS: Final = 20
LOOP_LAG_TARGET_MS: Final = 50
LOOP_LAG_INTERVAL_MS: Final = 200
FANOUT_CALLS_MAX: Final = 64  # partition calls one scan page has in flight at once.
CONFLICT_RETRIES_MAX: Final = 3  # re-runs of a read or singleton write blocked by an intent.
CONFLICT_BACKOFF_BASE_MS: Final = 2  # their pause: full jitter below base * 2**attempt.
CLOSE_DRAIN_MS: Final = 2_000  # closing a coordinator waits this long for running transactions.

# --- kvctl / local cluster (kvstore/localcluster.py, kvstore/cli/) ---------------------------
LOCAL_NODES_MAX: Final = 16  # storage nodes `kvctl cluster up` creates at most.
LOCAL_COORDINATORS_MAX: Final = 8  # coordinators it creates at most.
LOCAL_READY_TIMEOUT_MS: Final = 30_000  # a started process must answer its health page by then.
LOCAL_STOP_TIMEOUT_MS: Final = 10_000  # SIGTERM grace (a node drains up to 5 s), then SIGKILL.
LOCAL_LOCK_WAIT_MS: Final = 60_000  # a second kvctl waits this long for the first to finish.
LOCAL_PROBE_TIMEOUT_MS: Final = 2_000  # one health, metrics or stats call of `cluster status`.
LOCAL_RATE_SAMPLE_MS: Final = 500  # the gap between the two /metrics samples giving request rates.
LOCAL_POLL_MAX_MS: Final = 200  # cap of the backoff while polling readiness, exits, log files.
LOCAL_LOG_TAIL_LINES: Final = 20  # log lines shown when a process fails to start.
LOCAL_LOG_FOLLOW_BYTES_MAX: Final = 64 * 1024  # bytes `up --foreground` reads per log per poll.
LOCAL_FOLLOW_INTERVAL_MS: Final = 100  # `up --foreground` polls the logs and for a `cluster down`.
LOCAL_WATCH_INTERVAL_MS: Final = 500  # `up --foreground` checks that its processes still run.
LOCAL_DETACH_WAIT_MS: Final = 10_000  # `cluster down` waits this long for an attached `up` to exit.
# Bytes kvctl reads for one JSON argument given as `-` (stdin) or `@file`: a bound on memory,
# above TXN_BYTES_MAX since JSON text is larger than its encoding; the parsed value or ops then
# meet VALUE_BYTES_MAX / TXN_BYTES_MAX.
KVCTL_INPUT_BYTES_MAX: Final = 16 * 1024 * 1024

# Relations that must hold; checked at import.
assert TXN_OPS_MAX_DEFAULT <= TXN_OPS_MAX_CEILING
assert VALUE_BYTES_MAX < TXN_BYTES_MAX
assert PREPARE_DEADLINE_MS < INTENT_STALE_MS < LEDGER_DECISION_DEADLINE_MS
assert 0 < INTENT_WAIT_MS * 4 <= RPC_TIMEOUT_MS
assert 0 < INTENT_WAITERS_MAX <= NODE_REQUESTS_IN_PROGRESS_MAX
assert LEDGER_RETENTION_MS >= IDEMPOTENCY_WINDOW_MS
assert RESEND_INTERVAL_MS < FINISH_DEADLINE_MS
assert PATH_SEGMENTS_MAX <= VALUE_DEPTH_MAX
assert TXN_BYTES_MAX < RPC_FRAME_BYTES_MAX
assert RPC_BACKOFF_BASE_MS <= RPC_BACKOFF_MAX_MS
assert TXN_BYTES_MAX < API_BODY_BYTES_MAX
assert 1 <= SCAN_LIMIT_DEFAULT <= SCAN_PAGE_ITEMS_MAX
assert LOCAL_READY_TIMEOUT_MS + LOCAL_STOP_TIMEOUT_MS < LOCAL_LOCK_WAIT_MS
assert LOCAL_NODES_MAX <= PARTITIONS_MAX
assert LOCAL_FOLLOW_INTERVAL_MS <= LOCAL_WATCH_INTERVAL_MS < LOCAL_DETACH_WAIT_MS
assert TXN_BYTES_MAX < KVCTL_INPUT_BYTES_MAX

# --- SDK (docs/sdk.md) ----------------------------------------------------------------------
# The Python client: how long one call may take, how it retries, and how much it may retry.
SDK_TIMEOUT_MS_DEFAULT: Final = 10_000  # one SDK call's overall deadline, its retries included.
SDK_ATTEMPTS_MAX: Final = 6  # attempts of one SDK call (the first included).
SDK_RUN_ATTEMPTS_MAX: Final = 50  # transactions `run` starts for one call (conflicts re-run it).
SDK_BACKOFF_BASE_MS: Final = 10  # first retry pause: full jitter below base * 2**retry ...
SDK_BACKOFF_CAP_MS: Final = 1_000  # ... capped here (also caps an honoured Retry-After).
SDK_RETRY_BUDGET_WINDOW_MS: Final = 10_000  # the sliding window of the client's retry budget.
SDK_RETRY_BUDGET_SLOTS: Final = 10  # the window is counted in this many slots (its resolution).
SDK_RETRY_BUDGET_PERCENT: Final = 10  # retries allowed per 100 calls within the window ...
SDK_RETRY_BUDGET_FLOOR: Final = 10  # ... plus this many per window, so a quiet client retries.
SDK_TOKEN_DRAWS_MAX: Final = 1_024  # random idempotency tokens tried to land on a key's partition.
SDK_HTTP_CONNECTIONS_MAX: Final = 100  # pooled HTTP connections of one gateway client.
SDK_CONNECT_TIMEOUT_MS: Final = 2_000  # getting a connection to the gateway; then "not sent".
SDK_ATTEMPT_MIN_MS: Final = 1_000  # a retry is made only with this much of the call's time left.
SDK_SYNC_CLOSE_TIMEOUT_MS: Final = 10_000  # the sync client waits this long for its loop to end.

assert SDK_BACKOFF_BASE_MS <= SDK_BACKOFF_CAP_MS < SDK_TIMEOUT_MS_DEFAULT
assert SDK_ATTEMPTS_MAX >= 1 and SDK_RUN_ATTEMPTS_MAX >= 1
assert SDK_RETRY_BUDGET_WINDOW_MS % SDK_RETRY_BUDGET_SLOTS == 0
assert 0 <= SDK_RETRY_BUDGET_PERCENT <= 100
assert SDK_TOKEN_DRAWS_MAX >= PARTITIONS_DEFAULT

# --- chaos control (kvstore/chaos_control.py; test-only, off unless KVSTORE_CHAOS_CONTROL=1) ---
# A clock offset moves every wall-clock reading of a process; between two settings it changes by
# at most twice the bound, which keeps every RPC deadline derived from it under the wire's
# 10-minute ceiling (Jepsen's clock bumps go up to about 5 minutes; ours are scaled down).
CHAOS_BLOCKED_MAX: Final = 64  # peer addresses one process may be told to cut itself off from.
CHAOS_CLOCK_OFFSET_MS_MAX: Final = 120_000  # |offset| of a process's clock from the system's.
CHAOS_BODY_BYTES_MAX: Final = 16 * 1024  # a POST /chaos body.

__all__ += ["CHAOS_BLOCKED_MAX", "CHAOS_CLOCK_OFFSET_MS_MAX", "CHAOS_BODY_BYTES_MAX"]

# --- kvctl bench (kvstore/bench/, docs/bench.md) --------------------------------------------
# A benchmark is a bounded load on loopback: so many clients, so many seconds, then it stops.
BENCH_CLIENTS_DEFAULT: Final = 32  # concurrent clients of one run (pgbench -c).
BENCH_CLIENTS_MAX: Final = 256  # the most a run may ask for (PostgreSQL's max_connections: more).
BENCH_DURATION_S_DEFAULT: Final = 15  # the measured window of one run.
BENCH_DURATION_S_MAX: Final = 600  # the longest measured window a run may ask for.
BENCH_WARMUP_S: Final = 2  # load before the measured window, on both systems (not counted).
BENCH_RETRY_PAUSE_BASE_MS: Final = 1  # the store's callers pause below base * 2**retry ...
BENCH_RETRY_PAUSE_CAP_MS: Final = 50  # ... at most this, between attempts of one transaction.
BENCH_PROGRESS_INTERVAL_MS: Final = 250  # how often a run reports its progress.
BENCH_TXN_ATTEMPTS_MAX: Final = 100  # tries of one transaction on conflicts (pgbench --max-tries).
BENCH_LOAD_BATCH_ITEMS: Final = 100  # accounts per loading transaction of the store.
BENCH_SERVER_START_TIMEOUT_MS: Final = 60_000  # PostgreSQL's initdb + start, or the cluster's up.
BENCH_SERVER_STOP_TIMEOUT_MS: Final = 10_000  # PostgreSQL's fast shutdown, then SIGKILL.
BENCH_SQL_TIMEOUT_MS: Final = 120_000  # one psql call of the bench (loading, VACUUM, a check).
BENCH_RUN_GRACE_MS: Final = 30_000  # how long pgbench may outlive its -T before it is killed.

assert 1 <= BENCH_CLIENTS_DEFAULT <= BENCH_CLIENTS_MAX
assert 1 <= BENCH_DURATION_S_DEFAULT <= BENCH_DURATION_S_MAX
assert 0 < BENCH_RETRY_PAUSE_BASE_MS <= BENCH_RETRY_PAUSE_CAP_MS
assert BENCH_LOAD_BATCH_ITEMS <= TXN_OPS_MAX_DEFAULT

__all__ += [
    "BENCH_CLIENTS_DEFAULT",
    "BENCH_CLIENTS_MAX",
    "BENCH_DURATION_S_DEFAULT",
    "BENCH_DURATION_S_MAX",
    "BENCH_WARMUP_S",
    "BENCH_RETRY_PAUSE_BASE_MS",
    "BENCH_RETRY_PAUSE_CAP_MS",
    "BENCH_PROGRESS_INTERVAL_MS",
    "BENCH_TXN_ATTEMPTS_MAX",
    "BENCH_LOAD_BATCH_ITEMS",
    "BENCH_SERVER_START_TIMEOUT_MS",
    "BENCH_SERVER_STOP_TIMEOUT_MS",
    "BENCH_SQL_TIMEOUT_MS",
    "BENCH_RUN_GRACE_MS",
]

# --- full disks and repeated log lines (issue 17) ---------------------------------------------
# A node whose flush fails because its disk is full keeps the flush and retries it, first after
# DISK_FULL_RETRY_MIN_MS, then at doubling intervals of at most DISK_FULL_RETRY_MAX_MS, so writes
# resume within about DISK_FULL_RETRY_MAX_MS of space returning.
DISK_FULL_RETRY_MIN_MS: Final = 100
DISK_FULL_RETRY_MAX_MS: Final = 500
# A warning that repeats (a malformed frame, a bad request, an unreachable peer) is logged the
# first time, then at most once per this interval per kind, with the count of those suppressed.
LOG_REPEAT_INTERVAL_MS: Final = 10_000

assert 0 < DISK_FULL_RETRY_MIN_MS <= DISK_FULL_RETRY_MAX_MS

__all__ += ["DISK_FULL_RETRY_MIN_MS", "DISK_FULL_RETRY_MAX_MS", "LOG_REPEAT_INTERVAL_MS"]

# --- replication (issue 19, docs/replication.md) ------------------------------------------------
# A leader serves a partition for REPL_LEASE_MS (less the drift bound and REPL_LEASE_MARGIN_MS)
# after the send time of the last control-plane read that confirmed its leadership; a new leader
# waits REPL_LEASE_MS (plus drift and margin) before serving. Every REPL_TICK_MS a node renews
# its liveness key (REPL_LIVENESS_TTL_MS), reads the map (renewing its leases) and lists the live
# nodes (starting elections for partitions whose leader is gone). Failover therefore takes about
# TTL + etcd's expiry lag + tick + lease: 3.6 to 4.3 s measured (docs/replication.md).
REPL_LEASE_MS: Final = 1_000
REPL_LEASE_MARGIN_MS: Final = 50
REPL_TICK_MS: Final = 250
REPL_LIVENESS_TTL_MS: Final = 2_000
# The batches of each partition a node keeps in memory to re-ship to a lagging replica; one
# further behind gets a snapshot. At most REPL_BATCHES_PER_MESSAGE_MAX batches per message.
REPL_LOG_BATCHES_MAX: Final = 512
REPL_BATCHES_PER_MESSAGE_MAX: Final = 64
# A snapshot is one message holding every row of a partition (per table at most this many),
# so it is bounded by RPC_FRAME_BYTES_MAX; one that fails (too large, lost) is not built again
# for the same follower before REPL_SNAPSHOT_RETRY_MS.
REPL_SNAPSHOT_ROWS_MAX: Final = 1_000_000
REPL_SNAPSHOT_RETRY_MS: Final = 2_000
# A replication call's deadline, and an election poll's.
REPL_CALL_TIMEOUT_MS: Final = 1_000
# An election decides once every replica answered its poll, or this long after a majority did.
REPL_ELECTION_GRACE_MS: Final = 100
# An election whose map compare-and-set loses to another change retries on the newer map.
REPL_INSTALL_ATTEMPTS_MAX: Final = 8

assert REPL_TICK_MS * 3 <= REPL_LEASE_MS < REPL_LIVENESS_TTL_MS
assert 0 < REPL_BATCHES_PER_MESSAGE_MAX <= REPL_LOG_BATCHES_MAX

__all__ += [
    "REPL_LEASE_MS",
    "REPL_LEASE_MARGIN_MS",
    "REPL_TICK_MS",
    "REPL_LIVENESS_TTL_MS",
    "REPL_LOG_BATCHES_MAX",
    "REPL_BATCHES_PER_MESSAGE_MAX",
    "REPL_SNAPSHOT_ROWS_MAX",
    "REPL_SNAPSHOT_RETRY_MS",
    "REPL_CALL_TIMEOUT_MS",
    "REPL_INSTALL_ATTEMPTS_MAX",
    "REPL_ELECTION_GRACE_MS",
]

# --- the replicated control plane (kvstore/replication/etcd.py, local_etcd.py) ---------------
# One control-plane call (a read, a compare-and-set, a beat's keepalive and put, a list), every
# endpoint tried included, answers within CONTROL_CALL_TIMEOUT_MS or fails "timed out" (it may
# still have taken effect). A healthy etcd answers in milliseconds; the bound leaves room for an
# fsync on a slow disk and for a 3-member etcd electing a leader (about 1 s by default). Getting
# a connection to one endpoint is bounded apart, so a dead first endpoint leaves time to try the
# others; any connection that is refused fails at once anyway.
CONTROL_CALL_TIMEOUT_MS: Final = 1_000
CONTROL_CONNECT_TIMEOUT_MS: Final = 500
CONTROL_CONNECTIONS_MAX: Final = 32  # pooled HTTP connections of one client to its etcd members.
# A private etcd started on free loopback ports that another process took meanwhile (its log
# says "address already in use") is started again on new ports, this many times in all.
LOCAL_ETCD_START_ATTEMPTS_MAX: Final = 3

assert 0 < CONTROL_CONNECT_TIMEOUT_MS < CONTROL_CALL_TIMEOUT_MS
# A read answered after the lease could not renew it anyway (kvstore.replication.rules).
assert CONTROL_CALL_TIMEOUT_MS <= REPL_LEASE_MS

__all__ += [
    "CONTROL_CALL_TIMEOUT_MS",
    "CONTROL_CONNECT_TIMEOUT_MS",
    "CONTROL_CONNECTIONS_MAX",
    "LOCAL_ETCD_START_ATTEMPTS_MAX",
]

# --- replicated clusters in production (storage_node/service.py, gateway.py, client/native.py) --
# A node's coordinator whose operation was refused before anything ran (WrongOwner, or an
# Unavailable refusal such as "changing leader") runs it again when its map of the leaders moved
# meanwhile, at most COORDINATOR_REROUTES_MAX times; refused with WrongOwner while its map did not
# move, it first waits up to COORDINATOR_REROUTE_WAIT_MS (two map reads) for it to move.
COORDINATOR_REROUTES_MAX: Final = 2
COORDINATOR_REROUTE_WAIT_MS: Final = 2 * REPL_TICK_MS
# The SDK's native mode re-sends a call refused with WrongOwner naming the leader to that leader
# at once, at most NATIVE_REROUTES_MAX times per attempt (then its retry policy takes over).
NATIVE_REROUTES_MAX: Final = 3
# A leader it has no address for (a node added after it read the cluster file) makes it read the
# file again, at most once per NATIVE_CONFIG_REREAD_MS.
NATIVE_CONFIG_REREAD_MS: Final = 1_000
# `kvctl cluster up` of a replicated cluster returns once every partition has a serving leader
# (election, then the new leader's wait of one lease: 2-3 s on a fresh cluster), by this bound.
LOCAL_LEADERS_TIMEOUT_MS: Final = 20_000

# Moving a replica (kvstore/replication/operator.py, `kvctl partition move`, `kvctl node
# remove`): a learner must catch up with its leader within MOVE_CATCH_UP_TIMEOUT_MS (a snapshot
# of the partition, then the batches written meanwhile); a leader must commit a changed replica
# set (or, the leader removed, a successor must be elected and serve: liveness is not involved,
# so a tick, a poll and the takeover wait, 2-3 s) within MOVE_COMMIT_TIMEOUT_MS. The operator
# polls the leader's status every MOVE_POLL_MS, each call bounded by MOVE_STATUS_TIMEOUT_MS,
# and gives up after MOVE_STEPS_MAX rounds (a step each, a few more when the map changes under
# it). `kvctl node add` waits LOCAL_LIVENESS_TIMEOUT_MS for the new node's liveness key.
MOVE_CATCH_UP_TIMEOUT_MS: Final = 60_000
MOVE_COMMIT_TIMEOUT_MS: Final = 20_000
MOVE_POLL_MS: Final = 100
MOVE_STATUS_TIMEOUT_MS: Final = 2_000
MOVE_STEPS_MAX: Final = 16
LOCAL_LIVENESS_TIMEOUT_MS: Final = 10_000

assert COORDINATOR_REROUTE_WAIT_MS < RPC_TIMEOUT_MS
assert LOCAL_READY_TIMEOUT_MS + LOCAL_LEADERS_TIMEOUT_MS < LOCAL_LOCK_WAIT_MS
assert REPL_LEASE_MS + REPL_LIVENESS_TTL_MS < MOVE_COMMIT_TIMEOUT_MS
assert MOVE_POLL_MS < MOVE_STATUS_TIMEOUT_MS < MOVE_COMMIT_TIMEOUT_MS <= MOVE_CATCH_UP_TIMEOUT_MS

__all__ += [
    "COORDINATOR_REROUTES_MAX",
    "COORDINATOR_REROUTE_WAIT_MS",
    "NATIVE_REROUTES_MAX",
    "NATIVE_CONFIG_REREAD_MS",
    "LOCAL_LEADERS_TIMEOUT_MS",
    "MOVE_CATCH_UP_TIMEOUT_MS",
    "MOVE_COMMIT_TIMEOUT_MS",
    "MOVE_POLL_MS",
    "MOVE_STATUS_TIMEOUT_MS",
    "MOVE_STEPS_MAX",
    "LOCAL_LIVENESS_TIMEOUT_MS",
]

# --- DynamoDB endpoint (issue 21, kvstore/dynamodb/) -------------------------------------------
# DynamoDB's own limits (docs/dynamodb reference sections 3 and 4), enforced by the endpoint
# whatever boto3 validated (botocore never checks a maximum).
DYNAMODB_ITEM_BYTES_MAX: Final = 400 * 1024  # one item by AWS's size formula (attributes.py).
# Nested L/M levels in one attribute value: DynamoDB allows 32; 31 here, because the stored form
# (one-member type maps) nests two store levels per L/M level and a value nests at most
# VALUE_DEPTH_MAX = 64 (docs/dynamodb.md lists the gap).
DYNAMODB_NESTING_MAX: Final = 31
DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX: Final = 65_535  # UTF-8 bytes of a non-key attribute name.
DYNAMODB_NUMBER_DIGITS_MAX: Final = 38  # significant decimal digits of a number.
# Decimal exponent of a non-zero number's leading digit: 1E-130 .. 9.99...E+125.
DYNAMODB_NUMBER_EXPONENT_MAX: Final = 125
DYNAMODB_NUMBER_EXPONENT_MIN: Final = -130
DYNAMODB_EXPRESSION_BYTES_MAX: Final = 4 * 1024  # UTF-8 bytes of one expression's text.
DYNAMODB_EXPRESSION_OPERATORS_MAX: Final = 300  # operators (comparisons, AND/OR/NOT...) in one.
DYNAMODB_PLACEHOLDER_BYTES_MAX: Final = 255  # a #name or :value placeholder, its sigil included.
DYNAMODB_IN_OPERANDS_MAX: Final = 100  # values in the list of one IN.
# Function calls nested in one expression (list_append(if_not_exists(...), ...)): the parser's
# only recursion (AND/OR/NOT and parentheses use an explicit stack; AWS states no such bound).
DYNAMODB_EXPRESSION_DEPTH_MAX: Final = 64

assert DYNAMODB_ITEM_BYTES_MAX <= VALUE_BYTES_MAX
assert DYNAMODB_NUMBER_EXPONENT_MIN < 0 < DYNAMODB_NUMBER_EXPONENT_MAX

__all__ += [
    "DYNAMODB_ITEM_BYTES_MAX",
    "DYNAMODB_NESTING_MAX",
    "DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX",
    "DYNAMODB_NUMBER_DIGITS_MAX",
    "DYNAMODB_NUMBER_EXPONENT_MAX",
    "DYNAMODB_NUMBER_EXPONENT_MIN",
    "DYNAMODB_EXPRESSION_BYTES_MAX",
    "DYNAMODB_EXPRESSION_OPERATORS_MAX",
    "DYNAMODB_PLACEHOLDER_BYTES_MAX",
    "DYNAMODB_IN_OPERANDS_MAX",
    "DYNAMODB_EXPRESSION_DEPTH_MAX",
]

# --- DynamoDB endpoint: operations (kvstore/dynamodb/, docs/dynamodb.md) ---------------------
DYNAMODB_HASH_KEY_BYTES_MAX: Final = 2048  # a partition key value (AWS's).
DYNAMODB_SORT_KEY_BYTES_MAX: Final = 1024  # a sort key value (AWS's).
DYNAMODB_LIST_TABLES_MAX: Final = 100  # names in one ListTables page (AWS's Limit maximum).
DYNAMODB_SCHEMA_CACHE_MS: Final = 1_000  # how long a front end trusts a cached table schema.
DYNAMODB_SCHEMA_CACHE_TABLES_MAX: Final = 10_000  # schemas one front end caches at most.
# A deleted table's name stays taken (and its items unreachable) this long: more than a schema
# cache lifetime plus the clock skew bound, so no front end still writes into the old table.
DYNAMODB_TABLE_DELETE_GRACE_MS: Final = 10_000
# Catalogue pages (of DYNAMODB_LIST_TABLES_MAX records) one listing or janitor pass reads at most.
DYNAMODB_CATALOG_PAGES_MAX: Final = 1_000
# The janitor (kvstore/dynamodb/janitor.py): how often each API process looks for deleted
# tables to purge, how many items it deletes per pass, and how many deletes it has in flight.
DYNAMODB_PURGE_INTERVAL_MS: Final = 5_000
DYNAMODB_PURGE_ITEMS_PER_PASS: Final = 1_000
DYNAMODB_PURGE_DELETES_IN_FLIGHT_MAX: Final = 16
DYNAMODB_TRANSACT_ITEMS_MAX: Final = 100  # actions of TransactWriteItems / TransactGetItems.
DYNAMODB_BATCH_WRITE_ITEMS_MAX: Final = 25  # puts and deletes of one BatchWriteItem.
DYNAMODB_BATCH_GET_KEYS_MAX: Final = 100  # keys of one BatchGetItem.
DYNAMODB_CLIENT_TOKEN_CHARS_MAX: Final = 36  # a ClientRequestToken (AWS's).
DYNAMODB_PAGE_BYTES_MAX: Final = 1024 * 1024  # items (AWS's size) one Query/Scan page evaluates.
DYNAMODB_PAGE_CALL_ITEMS: Final = 100  # items asked of the store per call of a Query/Scan page.
DYNAMODB_PAGE_CALLS_MAX: Final = 64  # store calls one Query/Scan page makes at most.
# Encoded bytes of one such call's answer (past it the node stops early): 400 KB items would
# otherwise make a 100-item answer larger than a message may be.
DYNAMODB_PAGE_CALL_BYTES_MAX: Final = 2 * 1024 * 1024
DYNAMODB_SEGMENTS_MAX: Final = 1_000_000  # TotalSegments of a parallel Scan (AWS's).

assert DYNAMODB_TABLE_DELETE_GRACE_MS > 2 * DYNAMODB_SCHEMA_CACHE_MS
assert DYNAMODB_PAGE_CALL_ITEMS <= SCAN_PAGE_ITEMS_MAX
assert DYNAMODB_PAGE_CALL_BYTES_MAX + VALUE_BYTES_MAX + INTERNAL_KEY_BYTES_MAX < RPC_FRAME_BYTES_MAX

__all__ += [
    "DYNAMODB_HASH_KEY_BYTES_MAX",
    "DYNAMODB_SORT_KEY_BYTES_MAX",
    "DYNAMODB_LIST_TABLES_MAX",
    "DYNAMODB_SCHEMA_CACHE_MS",
    "DYNAMODB_SCHEMA_CACHE_TABLES_MAX",
    "DYNAMODB_TABLE_DELETE_GRACE_MS",
    "DYNAMODB_CATALOG_PAGES_MAX",
    "DYNAMODB_PURGE_INTERVAL_MS",
    "DYNAMODB_PURGE_ITEMS_PER_PASS",
    "DYNAMODB_PURGE_DELETES_IN_FLIGHT_MAX",
    "DYNAMODB_TRANSACT_ITEMS_MAX",
    "DYNAMODB_BATCH_WRITE_ITEMS_MAX",
    "DYNAMODB_BATCH_GET_KEYS_MAX",
    "DYNAMODB_CLIENT_TOKEN_CHARS_MAX",
    "DYNAMODB_PAGE_BYTES_MAX",
    "DYNAMODB_PAGE_CALL_ITEMS",
    "DYNAMODB_PAGE_CALLS_MAX",
    "DYNAMODB_PAGE_CALL_BYTES_MAX",
    "DYNAMODB_SEGMENTS_MAX",
]

# --- DynamoDB endpoint: wire, SigV4 (kvstore/dynamodb/sigv4.py, endpoint.py; issue 21) ---------
# A DynamoDB request body as sent (before gzip/deflate is undone), and the same body decoded:
# DynamoDB's own HTTP payload limit. Larger than API_BODY_BYTES_MAX on purpose: a BatchWriteItem
# of 25 items of 400 KB each, binary attributes in base64, passes 8 MiB.
DYNAMODB_BODY_BYTES_MAX: Final = 16 * 1024 * 1024
DYNAMODB_DECODED_BODY_BYTES_MAX: Final = 16 * 1024 * 1024
# How far a request's X-Amz-Date may be from this process's clock (Alternator's +-15 minutes;
# botocore signs every attempt anew, so only a skewed client clock comes near it).
DYNAMODB_SIGNATURE_SKEW_MS: Final = 15 * 60 * 1_000
DYNAMODB_AUTHORIZATION_CHARS_MAX: Final = 4_096  # an Authorization header; longer is malformed.
DYNAMODB_SIGNED_HEADERS_MAX: Final = 64  # names in SignedHeaders (botocore signs about 7).

assert API_BODY_BYTES_MAX <= DYNAMODB_BODY_BYTES_MAX <= DYNAMODB_DECODED_BODY_BYTES_MAX

__all__ += [
    "DYNAMODB_BODY_BYTES_MAX",
    "DYNAMODB_DECODED_BODY_BYTES_MAX",
    "DYNAMODB_SIGNATURE_SKEW_MS",
    "DYNAMODB_AUTHORIZATION_CHARS_MAX",
    "DYNAMODB_SIGNED_HEADERS_MAX",
]
