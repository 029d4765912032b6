"""The one runtime between the pure cores and the world, written once.

Theory of operation
-------------------
The protocol cores (``kvstore.storage_node.core``, ``kvstore.coordinator``) are pure: they take
messages, the time and random draws, and return what must happen. This package carries that
out, once, for every environment (DESIGN section 2a):

* :mod:`kvstore.runtime.scheduler`: the clock and timers the runtime runs on (asyncio in
  production; the simulator's virtual event loop; a hand-moved one in tests).
* :mod:`kvstore.runtime.actors`: :class:`ActorDriver`, which runs actor cores (transactions,
  recoveries, intent resolutions) over a :class:`Sender`, ticking them at their deadlines.
* :mod:`kvstore.runtime.node`: :class:`NodeRuntime`, one storage node: its partition cores over
  one :class:`~kvstore.storage_node.store.NodeStore`, admission, one group commit per node
  through a :class:`~kvstore.runtime.disk.Disk`, replies released after the flush they depend
  on, and background work (maintenance, stale intents, ledger driving) with its caps.
* :mod:`kvstore.runtime.disk`: how a flush job reaches the disk in production (on the event loop
  while the disk is fast, else on the node's flush thread).

Production (``kvstore.storage_node.service``, ``kvstore.coordinator.engine``), the deterministic
simulator (``chaos.sim.hosts``) and the test network (``tests/support/network.py``) instantiate
these classes with their own transport, storage, disk and scheduler; none of them keeps its own
copy of durability gating, background work, ticking or transaction construction.
"""
