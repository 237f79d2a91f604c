"""Where replicas and training workers run: filter, score and bind, plus gang and queue admission.

One call is one scheduling pass over a snapshot (nodes, what is already bound, what is
pending, the queues); it returns bindings, a reason for everything left pending, and the
preemptions to carry out. Nothing is remembered between calls: the caller applies the
result and calls again with the next snapshot.

The shape follows kube-scheduler (filter -> score -> bind, one item at a time, in priority
order) with gang and queue admission in the manner of Volcano and Kueue:

* **Filter.** A node fits an item when it is schedulable and its free resources
  (capacity minus everything bound to it, terminating work included, minus this pass's
  bindings) cover the request on every dimension, with enough free GPU ids.
* **Sampling, like kube-scheduler's percentageOfNodesToScore.** Scanning every node for
  every item is quadratic; a pass stops filtering once it has found
  ``max(MIN_FEASIBLE_NODES, FEASIBLE_NODES_PERCENT % of the nodes)`` feasible nodes, starting
  where the previous scan stopped (a rotating offset), and scores only those. Nodes that
  can no longer take even the smallest pending request are dropped from the scan lists,
  and a request shape that found no node is remembered for the rest of the pass (free room
  only shrinks within a pass, so anything at least as large fails too).
* **Score.** ``spread`` items (replicas) go to the node with the fewest items of the same
  owner, then to nodes without GPUs when they need none (GPU nodes are kept for GPU work),
  then to the least allocated node. Packed items (gang workers) go first to nodes already
  holding members of their gang in this pass, then to the node that can take the most of
  the gang's remaining members, then to the most allocated one, so a gang lands on few
  nodes and fills holes. GPU ids are handed out in ``NodeInfo.gpu_ids`` order.
* **Gangs** are all-or-nothing: considered only once every member is submitted, placed
  member by member on a scratch copy of the pass, and undone entirely if one fails.
* **Order.** Units (a gang or a single item) by queue priority, then priority (both
  descending), then fair share within a priority level (the queue's dominant-resource
  share of the schedulable capacity divided by its weight, recomputed after every
  admission), then ``created``, then id.
* **Quotas.** A unit whose queue would exceed a quota dimension stays pending.
* **Preemption.** A unit that does not fit for lack of room first waits for terminating
  work when that would be enough; otherwise it evicts preemptible work of strictly lower
  (queue priority, priority) -- whole gangs, lowest priority first, then the latest in the
  ``bound`` sequence first (``Bound`` carries no creation time; callers list older work
  first) -- the fewest groups that make it fit, without those on nodes it would not use.
  The room a waiting unit will use is reserved for the rest of the pass so lower units
  cannot take it. Nothing is preempted when even evicting every candidate would not do.

Priorities: a ``Bound``'s or ``Pending``'s queue priority is its queue's current
``QueueInfo.priority`` when the queue is known, else the item's own ``queue_priority``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Stop filtering after this many feasible nodes ...
MIN_FEASIBLE_NODES = 16
#: ... or this share of the schedulable nodes, whichever is larger (kube-scheduler's
#: percentageOfNodesToScore; its adaptive default is 42 % at 1,000 nodes, too costly here).
FEASIBLE_NODES_PERCENT = 5

_UNITS = (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_Shape = tuple[int, int, int]  # (cpu millis, memory bytes, gpu)
_TIMES = "\u00d7"  # the multiplication sign, as in "gang of 4 <times> (gpu 2)"


def _cpu_text(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory_text(amount: int) -> str:
    for suffix, unit in _UNITS:
        if abs(amount) >= unit:
            if amount % unit == 0:
                return f"{amount // unit}{suffix}"
            return f"{int(amount * 10 / unit) / 10:g}{suffix}"
    return str(amount)


def _gpu_text(count: int) -> str:
    return str(count)


_TEXT = (_cpu_text, _memory_text, _gpu_text)


def _describe(cpu: int, memory: int, gpu: int) -> str:
    parts = []
    if cpu:
        parts.append(f"cpu {_cpu_text(cpu)}")
    if memory:
        parts.append(f"memory {_memory_text(memory)}")
    if gpu:
        parts.append(f"gpu {gpu}")
    return ", ".join(parts) if parts else "nothing"


@dataclass(frozen=True)
class Resources:
    """An amount of cpu (millicores), memory (bytes) and GPUs."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.gpu + other.gpu)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.gpu - other.gpu)

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu and self.memory <= other.memory and self.gpu <= other.gpu

    def scaled(self, n: int) -> Resources:
        return Resources(self.cpu * n, self.memory * n, self.gpu * n)

    def is_zero(self) -> bool:
        return not (self.cpu or self.memory or self.gpu)

    def describe(self) -> str:
        """``cpu 1500m, memory 2Gi, gpu 1``: zero dimensions left out, cpu in cores when
        whole (``cpu 2``), memory in Ki/Mi/Gi/Ti (one decimal when not exact)."""
        return _describe(self.cpu, self.memory, self.gpu)

    @property
    def shape(self) -> _Shape:
        return (self.cpu, self.memory, self.gpu)


@dataclass(frozen=True)
class Quota:
    """A queue's limit per dimension; ``None`` leaves that dimension unlimited."""

    cpu: int | None = None
    memory: int | None = None
    gpu: int | None = None


@dataclass(frozen=True)
class NodeInfo:
    name: str
    capacity: Resources
    #: ids to hand out, ``len == capacity.gpu``; when empty, ``"0"`` .. ``"n-1"`` are used.
    gpu_ids: tuple[str, ...] = ()
    schedulable: bool = True  # False when cordoned, draining or lost
    state: str = "Ready"  # "Ready" | "Cordoned" | "Draining" | "Lost" (for reasons)


@dataclass(frozen=True)
class Bound:
    """Something already placed (running, starting or terminating)."""

    id: str
    node: str
    requests: Resources
    gpus: tuple[str, ...] = ()
    owner: str = ""  # e.g. "ModelDeployment/fraud" or "TrainingJob/train"
    gang: str | None = None
    queue: str | None = None
    priority: int = 0
    queue_priority: int = 0
    preemptible: bool = False
    terminating: bool = False  # still holds its resources


@dataclass(frozen=True)
class Pending:
    id: str
    requests: Resources
    owner: str = ""
    gang: str | None = None
    gang_size: int = 1
    queue: str | None = None
    priority: int = 0
    queue_priority: int = 0
    created: float = 0.0  # ordering tie-break (older first); passed in, never read from a clock
    spread: bool = True  # replicas spread across nodes; gang workers pack (spread=False)
    preemptible: bool = False


@dataclass(frozen=True)
class QueueInfo:
    name: str
    quota: Quota | None = None  # None: unlimited
    weight: float = 1.0
    priority: int = 0


@dataclass(frozen=True)
class Binding:
    id: str
    node: str
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Preemption:
    victims: tuple[str, ...]  # ids of Bound items to stop, with grace so they can checkpoint
    preemptor: str  # gang id or item id that needs the room
    reason: str


@dataclass(frozen=True)
class Schedule:
    bindings: list[Binding]
    pending: dict[str, str]  # item id -> a reason a human can act on
    preemptions: list[Preemption]


# ------------------------------------------------------------------------------ the pass


@dataclass
class _Unit:
    id: str
    members: list[Pending]
    gang: str | None
    queue: str | None
    rank: tuple[int, int]  # (queue priority, priority)
    created: float
    owner: str
    total: Resources
    spread: bool


@dataclass
class _VictimGroup:
    rank: tuple[int, int]
    order: int
    items: list[Bound]
    owner: str
    per_node: dict[int, list[int]] = field(default_factory=dict)
    claimed: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _owners_text(owners: Iterable[str]) -> str:
    names = sorted({o for o in owners if o})
    if not names:
        return ""
    if len(names) <= 2:
        return " of " + ", ".join(names)
    return f" of {names[0]}, {names[1]} and {len(names) - 2} more"


def _rank_text(mine: tuple[int, int], theirs: tuple[int, int]) -> str:
    if mine[0] != theirs[0]:
        return f"queue priority {mine[0]} > {theirs[0]}"
    return f"priority {mine[1]} > {theirs[1]}"


class _Pass:
    """The working state of one ``schedule`` call; discarded when it returns."""

    def __init__(
        self,
        nodes: Sequence[NodeInfo],
        bound: Sequence[Bound],
        pending: Sequence[Pending],
        queues: Mapping[str, QueueInfo],
    ) -> None:
        self.queues = queues
        self.unschedulable: dict[str, int] = {}
        sched: list[NodeInfo] = []
        for node in nodes:
            if node.schedulable:
                sched.append(node)
            else:
                state = node.state.lower() if node.state != "Ready" else "unschedulable"
                self.unschedulable[state] = self.unschedulable.get(state, 0) + 1
        self.nodes = sched
        n = len(sched)
        self.n = n
        self.index = {node.name: i for i, node in enumerate(sched)}
        self.names = [node.name for node in sched]
        self.cc = [node.capacity.cpu for node in sched]
        self.cm = [node.capacity.memory for node in sched]
        self.cg = [node.capacity.gpu for node in sched]
        self.icc = [1.0 / c if c > 0 else 0.0 for c in self.cc]
        self.icm = [1.0 / m if m > 0 else 0.0 for m in self.cm]
        self.icg = [1.0 / g if g > 0 else 0.0 for g in self.cg]
        self.is_gpu = [g > 0 for g in self.cg]
        self.fc = list(self.cc)
        self.fm = list(self.cm)
        used_g = [0] * n
        self.ids: list[list[str]] = [
            list(node.gpu_ids) if node.gpu_ids else [str(k) for k in range(node.capacity.gpu)]
            for node in sched
        ]
        term_c = [0] * n
        term_m = [0] * n
        term_g = [0] * n
        self.term_items: dict[int, list[Bound]] = {}
        self.owner_nodes: dict[str, dict[int, int]] = {}
        self.usage: dict[str, list[int]] = {}
        self.bound_in_gang: dict[str, int] = {}
        victims: dict[str, _VictimGroup] = {}
        ineligible_gangs: set[str] = set()
        for order, b in enumerate(bound):
            r = b.requests
            if b.queue is not None:
                u = self.usage.setdefault(b.queue, [0, 0, 0])
                u[0] += r.cpu
                u[1] += r.memory
                u[2] += r.gpu
            if b.gang is not None and not b.terminating:
                self.bound_in_gang[b.gang] = self.bound_in_gang.get(b.gang, 0) + 1
            i = self.index.get(b.node)
            if i is not None:
                self.fc[i] -= r.cpu
                self.fm[i] -= r.memory
                used_g[i] += r.gpu
                if b.gpus:
                    held = set(b.gpus)
                    self.ids[i] = [g for g in self.ids[i] if g not in held]
                if b.terminating:
                    term_c[i] += r.cpu
                    term_m[i] += r.memory
                    term_g[i] += r.gpu
                    self.term_items.setdefault(i, []).append(b)
                elif b.owner:
                    counts = self.owner_nodes.setdefault(b.owner, {})
                    counts[i] = counts.get(i, 0) + 1
            if b.terminating:
                continue
            key = b.gang if b.gang is not None else "\0" + b.id
            rank = (self._queue_priority(b.queue, b.queue_priority), b.priority)
            if not b.preemptible:
                ineligible_gangs.add(key)
                continue
            group = victims.get(key)
            if group is None:
                group = victims[key] = _VictimGroup(rank, order, [], b.owner)
            group.rank = max(group.rank, rank)
            group.order = max(group.order, order)
            group.items.append(b)
            if i is not None:
                acc = group.per_node.setdefault(i, [0, 0, 0])
                acc[0] += r.cpu
                acc[1] += r.memory
                acc[2] += r.gpu
        # lowest priority first, then the latest in ``bound`` first
        self.victims = sorted(
            (g for k, g in victims.items() if k not in ineligible_gangs),
            key=lambda g: (g.rank, -g.order),
        )
        self.fg = [max(0, min(self.cg[i] - used_g[i], len(self.ids[i]))) for i in range(n)]
        # "later": free once terminating work is gone, less the room waiting units reserved
        self.lc = [self.fc[i] + term_c[i] for i in range(n)]
        self.lm = [self.fm[i] + term_m[i] for i in range(n)]
        self.lg = [self.fg[i] + term_g[i] for i in range(n)]
        self.later_differs = bool(self.term_items)
        self.total = (sum(self.cc), sum(self.cm), sum(self.cg))

        # scan lists, pruned of nodes too full for the smallest pending request
        reqs = [p.requests for p in pending]
        self.min_c = min((r.cpu for r in reqs), default=0)
        self.min_m = min((r.memory for r in reqs), default=0)
        self.min_g = min((r.gpu for r in reqs if r.gpu > 0), default=1)
        self.plain = [i for i in range(n) if not self.is_gpu[i] and self._alive(i)]
        self.gpu_any = [i for i in range(n) if self.is_gpu[i] and self._alive(i)]
        self.gpu_free = [i for i in self.gpu_any if self.fg[i] >= self.min_g]
        self.in_plain = [False] * n
        self.in_gpu_any = [False] * n
        self.in_gpu_free = [False] * n
        for i in self.plain:
            self.in_plain[i] = True
        for i in self.gpu_any:
            self.in_gpu_any[i] = True
        for i in self.gpu_free:
            self.in_gpu_free[i] = True
        self.offsets = [0, 0, 0]
        self.want = min(n, max(MIN_FEASIBLE_NODES, n * FEASIBLE_NODES_PERCENT // 100))
        self.failed: list[_Shape] = []  # minimal request shapes that found no node this pass

        self.bindings: list[Binding] = []
        self.reasons: dict[str, str] = {}
        self.preemptions: list[Preemption] = []
        self.capacity_failed: list[_Unit] = []
        self.hopeless: set[tuple[tuple[_Shape, ...], tuple[int, int]]] = set()
        self.no_room_even_preempting: set[str] = set()
        self.units = self._units(pending)

    # ------------------------------------------------------------------ setup helpers

    def _queue_priority(self, queue: str | None, own: int) -> int:
        info = self.queues.get(queue) if queue is not None else None
        return info.priority if info is not None else own

    def _alive(self, i: int) -> bool:
        return self.fc[i] >= self.min_c and self.fm[i] >= self.min_m

    def _units(self, pending: Sequence[Pending]) -> list[_Unit]:
        units: list[_Unit] = []
        gangs: dict[str, list[Pending]] = {}
        for p in pending:
            if p.gang is None:
                units.append(self._unit(p.id, [p], None))
            else:
                gangs.setdefault(p.gang, []).append(p)
        for gang, members in gangs.items():
            members.sort(key=lambda p: p.id)
            size = max(p.gang_size for p in members)
            submitted = len(members) + self.bound_in_gang.get(gang, 0)
            if submitted < size:
                reason = f"waiting for the gang's other workers ({submitted} of {size} submitted)"
                for p in members:
                    self.reasons[p.id] = reason
                continue
            units.append(self._unit(gang, members, gang))
        return units

    def _unit(self, uid: str, members: list[Pending], gang: str | None) -> _Unit:
        first = members[0]
        total = Resources()
        for p in members:
            total = total + p.requests
        return _Unit(
            id=uid,
            members=members,
            gang=gang,
            queue=first.queue,
            rank=(
                self._queue_priority(first.queue, max(p.queue_priority for p in members)),
                max(p.priority for p in members),
            ),
            created=min(p.created for p in members),
            owner=first.owner,
            total=total,
            spread=first.spread if gang is None else False,
        )

    # ------------------------------------------------------------------------- driver

    def run(self) -> Schedule:
        levels: dict[tuple[int, int], dict[str | None, list[_Unit]]] = {}
        for unit in self.units:
            levels.setdefault(unit.rank, {}).setdefault(unit.queue, []).append(unit)
        for rank in sorted(levels, reverse=True):
            heap: list[tuple[float, float, str, int]] = []
            lanes: list[tuple[str | None, list[_Unit]]] = []
            for queue, units in levels[rank].items():
                units.sort(key=lambda u: (u.created, u.id), reverse=True)  # pop() = oldest
                lanes.append((queue, units))
                head = units[-1]
                heapq.heappush(heap, (self._share(queue), head.created, head.id, len(lanes) - 1))
            while heap:
                _, _, _, lane = heapq.heappop(heap)
                queue, units = lanes[lane]
                self._admit(units.pop())
                if units:
                    head = units[-1]
                    heapq.heappush(heap, (self._share(queue), head.created, head.id, lane))
        self._explain_capacity_failures()
        return Schedule(self.bindings, self.reasons, self.preemptions)

    def _share(self, queue: str | None) -> float:
        if queue is None:
            return 0.0
        used = self.usage.get(queue)
        if used is None:
            return 0.0
        share = 0.0
        for amount, total in zip(used, self.total, strict=True):
            if total > 0:
                share = max(share, amount / total)
        info = self.queues.get(queue)
        weight = info.weight if info is not None else 1.0
        return share / max(weight, 1e-9)

    def _admit(self, unit: _Unit) -> None:
        over = self._over_quota(unit)
        if over is not None:
            self._pend(unit, over)
            return
        placed = self._place_unit(unit)
        if placed is not None:
            for member, (i, ids) in zip(unit.members, placed, strict=True):
                self.bindings.append(Binding(member.id, self.names[i], ids))
            if unit.queue is not None:
                u = self.usage.setdefault(unit.queue, [0, 0, 0])
                u[0] += unit.total.cpu
                u[1] += unit.total.memory
                u[2] += unit.total.gpu
            return
        if not self._wait_or_preempt(unit):
            self.capacity_failed.append(unit)

    def _pend(self, unit: _Unit, reason: str) -> None:
        for p in unit.members:
            self.reasons[p.id] = reason

    def _over_quota(self, unit: _Unit) -> str | None:
        if unit.queue is None:
            return None
        info = self.queues.get(unit.queue)
        if info is None or info.quota is None:
            return None
        used = self.usage.get(unit.queue, [0, 0, 0])
        q = info.quota
        for name, limit, in_use, need in (
            ("gpu", q.gpu, used[2], unit.total.gpu),
            ("cpu", q.cpu, used[0], unit.total.cpu),
            ("memory", q.memory, used[1], unit.total.memory),
        ):
            if limit is not None and need > 0 and in_use + need > limit:
                text = _cpu_text if name == "cpu" else _memory_text if name == "memory" else str
                return (
                    f"queue '{unit.queue}' quota: {name} {text(in_use)} in use of "
                    f"{text(limit)}; this needs {text(need)}"
                )
        return None

    # ---------------------------------------------------------------------- placement

    def _place_unit(self, unit: _Unit) -> list[tuple[int, tuple[str, ...]]] | None:
        """Bind every member or none; returns (node, gpu ids) per member."""
        if unit.gang is None:
            p = unit.members[0]
            r = p.requests
            i = self._choose(r.cpu, r.memory, r.gpu, p.owner, p.spread, None, 1)
            if i is None:
                return None
            ids = self._take(i, r.cpu, r.memory, r.gpu, p.owner)
            self._prune(i)
            return [(i, ids)]
        done: list[tuple[int, tuple[str, ...]]] = []
        gang_nodes: dict[int, None] = {}
        remaining = len(unit.members)
        for p in unit.members:
            r = p.requests
            i = self._choose(r.cpu, r.memory, r.gpu, p.owner, False, gang_nodes, remaining)
            if i is None:
                for (j, ids), q in zip(
                    reversed(done), reversed(unit.members[: len(done)]), strict=True
                ):
                    self._give_back(j, q.requests, ids, q.owner)
                return None
            done.append((i, self._take(i, r.cpu, r.memory, r.gpu, p.owner)))
            gang_nodes[i] = None
            remaining -= 1
        for i in gang_nodes:
            self._prune(i)
        return done

    def _dominated(self, rc: int, rm: int, rg: int) -> bool:
        return any(rc >= c and rm >= m and rg >= g for c, m, g in self.failed)

    def _choose(
        self,
        rc: int,
        rm: int,
        rg: int,
        owner: str,
        spread: bool,
        gang_nodes: dict[int, None] | None,
        remaining: int,
    ) -> int | None:
        fc, fm, fg = self.fc, self.fm, self.fg
        if gang_nodes:
            here = [i for i in gang_nodes if fc[i] >= rc and fm[i] >= rm and fg[i] >= rg]
            if here:
                return self._best_pack(here, rc, rm, rg, remaining)
        if self._dominated(rc, rm, rg):
            return None
        want = self.want
        found: list[int] = []
        if rg > 0:
            self._scan(2, self.gpu_free, rc, rm, rg, want, found)
        else:
            self._scan(0, self.plain, rc, rm, rg, want, found)
            if len(found) < want:
                self._scan(1, self.gpu_any, rc, rm, rg, want, found)
        if not found:
            if not gang_nodes:  # a clean state: the shape fails for the rest of the pass
                self.failed = [
                    s for s in self.failed if not (s[0] >= rc and s[1] >= rm and s[2] >= rg)
                ]
                self.failed.append((rc, rm, rg))
            return None
        if spread:
            return self._best_spread(found, rc, rm, rg, owner)
        return self._best_pack(found, rc, rm, rg, remaining)

    def _scan(
        self, which: int, lst: list[int], rc: int, rm: int, rg: int, want: int, found: list[int]
    ) -> None:
        n = len(lst)
        if n == 0:
            return
        fc, fm, fg = self.fc, self.fm, self.fg
        start = self.offsets[which] % n
        pos = start
        for pos in range(start, n):
            i = lst[pos]
            if fc[i] >= rc and fm[i] >= rm and fg[i] >= rg:
                found.append(i)
                if len(found) >= want:
                    self.offsets[which] = pos + 1
                    return
        for pos in range(start):
            i = lst[pos]
            if fc[i] >= rc and fm[i] >= rm and fg[i] >= rg:
                found.append(i)
                if len(found) >= want:
                    self.offsets[which] = pos + 1
                    return
        self.offsets[which] = start

    def _best_spread(self, found: list[int], rc: int, rm: int, rg: int, owner: str) -> int:
        counts = self.owner_nodes.get(owner) if owner else None
        fc, fm, fg, cc, cm, cg = self.fc, self.fm, self.fg, self.cc, self.cm, self.cg
        icc, icm, icg, is_gpu = self.icc, self.icm, self.icg, self.is_gpu
        best = found[0]
        best_key: tuple[int, bool, float] | None = None
        avoid_gpu = rg == 0
        for i in found:
            alloc = (cc[i] - fc[i] + rc) * icc[i] + (cm[i] - fm[i] + rm) * icm[i]
            if rg:
                alloc += (cg[i] - fg[i] + rg) * icg[i]
            key = (counts.get(i, 0) if counts else 0, avoid_gpu and is_gpu[i], alloc)
            if best_key is None or key < best_key:
                best, best_key = i, key
        return best

    def _best_pack(self, found: list[int], rc: int, rm: int, rg: int, remaining: int) -> int:
        fc, fm, fg, cc, cm, cg = self.fc, self.fm, self.fg, self.cc, self.cm, self.cg
        icc, icm, icg, is_gpu = self.icc, self.icm, self.icg, self.is_gpu
        best = found[0]
        best_key: tuple[int, bool, float, float] | None = None
        for i in found:
            room = remaining
            if rc:
                room = min(room, fc[i] // rc)
            if rm:
                room = min(room, fm[i] // rm)
            if rg:
                room = min(room, fg[i] // rg)
            gpu_alloc = (cg[i] - fg[i] + rg) * icg[i]
            alloc = (cc[i] - fc[i] + rc) * icc[i] + (cm[i] - fm[i] + rm) * icm[i]
            key = (-room, rg == 0 and is_gpu[i], -gpu_alloc, -alloc)
            if best_key is None or key < best_key:
                best, best_key = i, key
        return best

    def _take(self, i: int, rc: int, rm: int, rg: int, owner: str) -> tuple[str, ...]:
        self.fc[i] -= rc
        self.fm[i] -= rm
        self.lc[i] -= rc
        self.lm[i] -= rm
        ids: tuple[str, ...] = ()
        if rg:
            free = self.ids[i]
            ids = tuple(free[:rg])
            del free[:rg]
            self.fg[i] -= rg
            self.lg[i] -= rg
        if owner:
            counts = self.owner_nodes.setdefault(owner, {})
            counts[i] = counts.get(i, 0) + 1
        return ids

    def _give_back(self, i: int, r: Resources, ids: tuple[str, ...], owner: str) -> None:
        self.fc[i] += r.cpu
        self.fm[i] += r.memory
        self.lc[i] += r.cpu
        self.lm[i] += r.memory
        if r.gpu:
            self.ids[i][:0] = ids
            self.fg[i] += r.gpu
            self.lg[i] += r.gpu
        if owner:
            self.owner_nodes[owner][i] -= 1

    def _prune(self, i: int) -> None:
        if not self._alive(i):
            if self.in_plain[i]:
                self.in_plain[i] = False
                self.plain.remove(i)
            if self.in_gpu_any[i]:
                self.in_gpu_any[i] = False
                self.gpu_any.remove(i)
        if self.in_gpu_free[i] and (self.fg[i] < self.min_g or not self._alive(i)):
            self.in_gpu_free[i] = False
            self.gpu_free.remove(i)

    # --------------------------------------------------------------------- preemption

    def _simulate_later(
        self, shapes: list[_Shape], extra: dict[int, list[int]]
    ) -> list[tuple[int, int, int, int]] | None:
        """Place ``shapes`` on the "later" view plus ``extra`` (victims' room), by a full
        scan; a node that needs no victims wins, then the tightest fit. ``None``: no room."""
        lc, lm, lg = self.lc, self.lm, self.lg
        icc, icm, icg = self.icc, self.icm, self.icg
        used: dict[int, list[int]] = {}
        plan: list[tuple[int, int, int, int]] = []
        zero = [0, 0, 0]
        low_c = min(r[0] for r in shapes)
        low_m = min(r[1] for r in shapes)
        low_g = min(r[2] for r in shapes)
        candidates = []  # nodes with room for the smallest member, victims gone
        for i in range(self.n):
            e = extra.get(i, zero)
            if lc[i] + e[0] >= low_c and lm[i] + e[1] >= low_m and lg[i] + e[2] >= low_g:
                candidates.append(i)
        for rc, rm, rg in shapes:
            best = -1
            best_key: tuple[bool, bool, float] | None = None
            for i in candidates:
                u = used.get(i, zero)
                e = extra.get(i, zero)
                c = lc[i] - u[0] - rc
                m = lm[i] - u[1] - rm
                g = lg[i] - u[2] - rg
                if c + e[0] < 0 or m + e[1] < 0 or g + e[2] < 0:
                    continue
                key = (
                    i not in used,
                    c < 0 or m < 0 or g < 0,
                    (c + e[0]) * icc[i] + (m + e[1]) * icm[i] + (g + e[2]) * icg[i],
                )
                if best_key is None or key < best_key:
                    best, best_key = i, key
            if best < 0:
                return None
            acc = used.setdefault(best, [0, 0, 0])
            acc[0] += rc
            acc[1] += rm
            acc[2] += rg
            plan.append((best, rc, rm, rg))
        return plan

    @staticmethod
    def _extra(groups: Sequence[_VictimGroup]) -> dict[int, list[int]]:
        extra: dict[int, list[int]] = {}
        for group in groups:
            for i, (c, m, g) in group.per_node.items():
                acc = extra.setdefault(i, [0, 0, 0])
                acc[0] += c
                acc[1] += m
                acc[2] += g
        return extra

    def _reserve(self, plan: list[tuple[int, int, int, int]]) -> None:
        """Hold the room a waiting unit will use: out of the later view, and out of what is
        free now as far as it is, so that lower units cannot take it meanwhile."""
        for i, rc, rm, rg in plan:
            self.lc[i] -= rc
            self.lm[i] -= rm
            self.lg[i] -= rg
            self.fc[i] -= min(max(self.fc[i], 0), rc)
            self.fm[i] -= min(max(self.fm[i], 0), rm)
            take = min(self.fg[i], rg)
            if take > 0:
                del self.ids[i][:take]
                self.fg[i] -= take
            self._prune(i)

    def _wait_or_preempt(self, unit: _Unit) -> bool:
        shapes = [p.requests.shape for p in unit.members]
        need = unit.total.describe()
        if self.later_differs:
            plan = self._simulate_later(shapes, {})
            if plan is not None:
                nodes = {i for i, *_ in plan}
                waiting = [b for i in sorted(nodes) for b in self.term_items.get(i, [])]
                self._reserve(plan)
                if waiting:
                    noun = "worker" if all(b.gang or b.queue for b in waiting) else "item"
                    reason = (
                        f"waiting for {_plural(len(waiting), 'terminating ' + noun)}"
                        f"{_owners_text(b.owner for b in waiting)} to stop ({need} needed)"
                    )
                else:
                    reason = f"waiting for preempted work to stop ({need} needed)"
                self._pend(unit, reason)
                return True
        key = (tuple(shapes), unit.rank)
        if key in self.hopeless:
            self.no_room_even_preempting.add(unit.id)
            return False
        groups = [g for g in self.victims if not g.claimed and g.rank < unit.rank]
        if not groups:
            return False
        if self._simulate_later(shapes, self._extra(groups)) is None:
            self.hopeless.add(key)
            self.no_room_even_preempting.add(unit.id)
            return False
        lo, hi = 1, len(groups)  # the smallest prefix of ``groups`` that makes room
        while lo < hi:
            mid = (lo + hi) // 2
            if self._simulate_later(shapes, self._extra(groups[:mid])) is not None:
                hi = mid
            else:
                lo = mid + 1
        chosen = groups[:hi]
        plan = self._simulate_later(shapes, self._extra(chosen))
        assert plan is not None
        nodes = {i for i, *_ in plan}
        fewer = [g for g in chosen if nodes.intersection(g.per_node)]
        fewer_plan = self._simulate_later(shapes, self._extra(fewer))
        if fewer_plan is not None:
            chosen, plan = fewer, fewer_plan
        if not chosen:  # room without victims that the greedy pass missed: no eviction
            return False
        for group in chosen:
            group.claimed = True
            for i, (c, m, g) in group.per_node.items():
                self.lc[i] += c
                self.lm[i] += m
                self.lg[i] += g
        self.later_differs = True
        self._reserve(plan)
        victims = tuple(b.id for g in chosen for b in g.items)
        top = max(g.rank for g in chosen)
        who = unit.owner or unit.id
        self.preemptions.append(
            Preemption(
                victims=victims,
                preemptor=unit.id,
                reason=f"preempted by {who} ({_rank_text(unit.rank, top)}): needs {need}",
            )
        )
        self._pend(
            unit,
            f"waiting for {_plural(len(victims), 'preempted worker')}"
            f"{_owners_text(g.owner for g in chosen)} to stop ({need} needed)",
        )
        return True

    # ------------------------------------------------------------------------ reasons

    def _not_schedulable_text(self) -> str:
        order = ("cordoned", "draining", "lost", "unschedulable")
        keys = sorted(self.unschedulable, key=lambda k: (order.index(k) if k in order else 9, k))
        return ", ".join(f"{self.unschedulable[k]} {k}" for k in keys)

    def _explain_capacity_failures(self) -> None:
        if not self.capacity_failed:
            return
        singles: dict[_Shape, str] = {}
        gangs: dict[tuple[_Shape, ...], str] = {}
        suffix = ""
        if self.n and self.unschedulable:
            suffix = f" (not counting {self._not_schedulable_text()})"
        for unit in self.capacity_failed:
            if unit.gang is None:
                shape = unit.members[0].requests.shape
                if shape not in singles:
                    singles[shape] = self._shape_reason(shape) + suffix
                reason = singles[shape]
            else:
                shapes = tuple(p.requests.shape for p in unit.members)
                if shapes not in gangs:
                    gangs[shapes] = self._gang_reason(unit) + suffix
                reason = gangs[shapes]
            if unit.id in self.no_room_even_preempting:
                reason += "; preempting all lower-priority work would not make room"
            self._pend(unit, reason)

    def _shape_reason(self, shape: _Shape) -> str:
        if self.n == 0:
            if self.unschedulable:
                return f"no node can take work: {self._not_schedulable_text()}"
            return "no nodes"
        rc, rm, rg = shape
        need = _describe(rc, rm, rg)
        dims = (
            ("cpu", rc, self.cc, self.fc, _cpu_text),
            ("memory", rm, self.cm, self.fm, _memory_text),
            ("gpu", rg, self.cg, self.fg, str),
        )
        too_big = []
        for name, req, cap, _, text in dims:
            if req > 0:
                i = max(range(self.n), key=lambda j: cap[j])
                if cap[i] < req:
                    too_big.append(f"{name} {text(cap[i])} ({self.names[i]})")
        if too_big:
            return f"needs {need} but the largest node has " + ", ".join(too_big)
        short = []
        for name, req, _, free, text in dims:
            if req > 0:
                i = max(range(self.n), key=lambda j: free[j])
                if free[i] < req:
                    short.append(f"{name} {text(max(free[i], 0))} ({self.names[i]})")
        if short:
            return f"needs {need}; most free on any node: " + ", ".join(short)

        def closeness(j: int) -> float:
            return min((free[j] / req for _, req, _, free, _ in dims if req > 0), default=1.0)

        j = max(range(self.n), key=closeness)
        free_text = _describe(max(self.fc[j], 0), max(self.fm[j], 0), self.fg[j])
        return (
            f"needs {need}; no node has all of it free; closest: {self.names[j]} ({free_text} free)"
        )

    def _gang_reason(self, unit: _Unit) -> str:
        shapes = {p.requests.shape for p in unit.members}
        count = len(unit.members)
        if len(shapes) == 1:
            what = f"gang of {count} {_TIMES} ({unit.members[0].requests.describe()})"
        else:
            what = f"gang of {count} ({unit.total.describe()} in all)"
        fit = 0
        placed: list[tuple[int, Pending, tuple[str, ...]]] = []
        gang_nodes: dict[int, None] = {}
        for p in unit.members:
            r = p.requests
            i = self._choose(r.cpu, r.memory, r.gpu, "", False, gang_nodes, count - fit)
            if i is None:
                continue
            placed.append((i, p, self._take(i, r.cpu, r.memory, r.gpu, "")))
            gang_nodes[i] = None
            fit += 1
        for i, p, ids in reversed(placed):
            self._give_back(i, p.requests, ids, "")
        if count == 1:
            return self._shape_reason(unit.members[0].requests.shape)
        if fit == 0:
            worst = max(unit.members, key=lambda p: p.requests.shape)
            return f"{what}: none fit now; {self._shape_reason(worst.requests.shape)}"
        return f"{what}: only {fit} fit now"


def schedule(
    nodes: Sequence[NodeInfo],
    bound: Sequence[Bound],
    pending: Sequence[Pending],
    queues: Mapping[str, QueueInfo],
) -> Schedule:
    """One scheduling pass: bind what fits, explain what does not, preempt where allowed."""
    return _Pass(nodes, bound, pending, queues).run()


def check_fits(requests: Resources, count: int, nodes: Sequence[NodeInfo]) -> str | None:
    """Apply-time check against capacity (ignoring current use; every node not Lost counts,
    cordoned ones included): ``None`` if ``count`` items of ``requests`` could ever run at
    once, else why not, e.g. ``requests gpu 4 but the largest node has gpu 2 (node-a)``."""
    usable = [n for n in nodes if n.state != "Lost"]
    lost = len(nodes) - len(usable)
    if not usable:
        return f"no nodes ({lost} lost)" if lost else "no nodes"
    need = requests.describe()
    dims = [
        (name, req, _TEXT[k], k)
        for k, (name, req) in enumerate(
            (("cpu", requests.cpu), ("memory", requests.memory), ("gpu", requests.gpu))
        )
        if req > 0
    ]
    if not dims:
        return None  # a request of nothing fits anywhere
    too_big = []
    for name, req, text, k in dims:
        largest = max(usable, key=lambda n: n.capacity.shape[k])
        if largest.capacity.shape[k] < req:
            too_big.append(f"{name} {text(largest.capacity.shape[k])} ({largest.name})")
    if too_big:
        return f"requests {need} but the largest node has " + ", ".join(too_big)

    def room(node: NodeInfo) -> int:
        return min(node.capacity.shape[k] // req for _, req, _, k in dims)

    def closeness(node: NodeInfo) -> float:
        return min(node.capacity.shape[k] / req for _, req, _, k in dims)

    counted = sorted((r, n.name) for n in usable if (r := room(n)) > 0)
    counted.sort(key=lambda x: (-x[0], x[1]))
    if not counted:
        best = max(usable, key=closeness)
        cap = best.capacity.describe()
        return f"requests {need} but no node has all of it; closest: {best.name} ({cap})"
    total = sum(r for r, _ in counted)
    if total >= count:
        return None
    listed = ", ".join(f"{name} {r}" for r, name in counted[:4])
    if len(counted) > 4:
        listed += f", {len(counted) - 4} more"
    return (
        f"a gang of {count} workers {_TIMES} ({need}) does not fit: the cluster holds at most "
        f"{total} ({listed})"
    )
