"""Scheduling throughput of the pure scheduler policy: one pass, many items, many nodes.

    .venv/bin/python bench/scheduler.py [--nodes 1000] [--items 10000] [--seed 7]
                                        [--runs 3] [--naive-items 1000]

In one run, in this process, with a fixed random seed:

1. builds ``--nodes`` nodes (8-64 cores, 32-256 Gi, 0/4/8 GPUs) and ``--items`` pending
   items: about 60 % replicas of ~200 ``ModelDeployment``s (a tenth of them with a GPU),
   the rest workers of ``TrainingJob`` gangs of 1-8 (most with GPUs) in four queues of
   different weights and priorities, one of them with a GPU quota; GPU demand exceeds
   the cluster's, so part of the work stays pending with a reason;
2. times ``pilothouse.policy.scheduler.schedule`` on all of it in ONE call, best of
   ``--runs`` (``time.perf_counter``), and checks the result: no node dimension or GPU id
   over-allocated, every gang placed whole or not at all, a reason for every unplaced item;
3. times a naive reference written here -- the textbook loop: for every item, filter
   every node, score every feasible one (the same spread / pack rules), bind the best;
   gangs all-or-nothing -- on the first ``--naive-items`` items, extrapolated per item;
4. prints placements/s and ratios against the issue's target (5,000/s), kube-scheduler's
   documented scalability target (100 pods/s: the Kubernetes SIG Scalability
   "scheduling throughput" figure), and the naive reference; writes JSON to
   ``bench/results/scheduler-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from common import fmt, print_ratios, write_result
from model_server import REPO, source_fingerprint

from pilothouse.policy.scheduler import (
    Binding,
    NodeInfo,
    Pending,
    QueueInfo,
    Quota,
    Resources,
    Schedule,
    schedule,
)

TARGET_PER_S = 5_000.0  # the target, pure Python on a slow 2-core machine
KUBE_SCHEDULER_PER_S = 100.0  # Kubernetes SIG Scalability: scheduling throughput 100 pods/s
GI = 2**30
MI = 2**20


def build_nodes(count: int, rng: random.Random) -> list[NodeInfo]:
    nodes = []
    for k in range(count):
        cores = rng.choice((8, 16, 32, 64))
        memory = rng.choice((32, 64, 128, 256)) * GI
        gpu = rng.choices((0, 4, 8), weights=(60, 25, 15))[0]
        nodes.append(
            NodeInfo(
                name=f"node-{k:04d}",
                capacity=Resources(cores * 1000, memory, gpu),
                gpu_ids=tuple(str(g) for g in range(gpu)),
            )
        )
    return nodes


QUEUES = {
    "research": QueueInfo("research", Quota(gpu=300), weight=1.0),
    "prod": QueueInfo("prod", weight=2.0, priority=10),
    "batch": QueueInfo("batch", weight=1.0),
    "adhoc": QueueInfo("adhoc", weight=0.5),
}


def build_pending(count: int, rng: random.Random) -> list[Pending]:
    items: list[Pending] = []
    replicas = int(count * 0.6)
    deployments = 200
    shapes = [
        Resources(
            rng.choice((250, 500, 1000, 2000)),
            rng.choice((512 * MI, GI, 2 * GI, 4 * GI)),
            1 if rng.random() < 0.1 else 0,
        )
        for _ in range(deployments)
    ]
    for k in range(replicas):
        d = k % deployments
        items.append(
            Pending(
                id=f"md-{d:03d}-r{k // deployments}",
                requests=shapes[d],
                owner=f"ModelDeployment/md-{d:03d}",
                priority=rng.choice((0, 100)),
                created=float(k),
            )
        )
    job = 0
    while len(items) < count:
        size = min(rng.randint(1, 8), count - len(items))
        queue = rng.choice(tuple(QUEUES))
        requests = Resources(
            rng.choice((1000, 2000, 4000, 8000)),
            rng.choice((4, 8, 16, 32)) * GI,
            rng.choices((0, 1, 2, 4), weights=(30, 30, 25, 15))[0],
        )
        for w in range(size):
            items.append(
                Pending(
                    id=f"job-{job:04d}-w{w}",
                    requests=requests,
                    owner=f"TrainingJob/job-{job:04d}",
                    gang=f"job-{job:04d}-a1",
                    gang_size=size,
                    queue=queue,
                    priority=rng.choice((0, 50)),
                    created=float(replicas + job),
                    spread=False,
                    preemptible=True,
                )
            )
        job += 1
    rng.shuffle(items)
    return items


# ------------------------------------------------------------------- naive reference


def naive_schedule(nodes: Sequence[NodeInfo], pending: Sequence[Pending]) -> int:
    """The textbook loop: every item filters every node and scores every feasible one.
    Same ordering and rules in spirit (spread by owner then least allocated; gangs pack,
    all or nothing); no quotas, preemption or reasons. Returns the number placed."""
    free_c = {n.name: n.capacity.cpu for n in nodes}
    free_m = {n.name: n.capacity.memory for n in nodes}
    free_ids = {n.name: list(n.gpu_ids) for n in nodes}
    cap = {n.name: n.capacity for n in nodes}
    owners: dict[tuple[str, str], int] = {}
    units: dict[str, list[Pending]] = {}
    for p in pending:
        units.setdefault(p.gang or p.id, []).append(p)
    order = sorted(
        units.values(),
        key=lambda ms: (-ms[0].queue_priority, -ms[0].priority, ms[0].created, ms[0].id),
    )
    placed = 0

    def fits(name: str, r: Resources) -> bool:
        return free_c[name] >= r.cpu and free_m[name] >= r.memory and len(free_ids[name]) >= r.gpu

    def alloc(name: str, r: Resources) -> float:
        c = cap[name]
        used = (c.cpu - free_c[name] + r.cpu) / c.cpu + (
            c.memory - free_m[name] + r.memory
        ) / c.memory
        if c.gpu:
            used += (c.gpu - len(free_ids[name]) + r.gpu) / c.gpu
        return used

    for members in order:
        taken: list[tuple[str, Pending, list[str]]] = []
        for p in members:
            r = p.requests
            feasible = [n.name for n in nodes if n.schedulable and fits(n.name, r)]
            if not feasible:
                break
            if p.spread:
                best = min(feasible, key=lambda n: (owners.get((p.owner, n), 0), alloc(n, r)))
            else:
                best = max(feasible, key=lambda n: alloc(n, r))
            free_c[best] -= r.cpu
            free_m[best] -= r.memory
            ids = free_ids[best][: r.gpu]
            del free_ids[best][: r.gpu]
            owners[(p.owner, best)] = owners.get((p.owner, best), 0) + 1
            taken.append((best, p, ids))
        if len(taken) < len(members):
            for name, p, ids in reversed(taken):
                free_c[name] += p.requests.cpu
                free_m[name] += p.requests.memory
                free_ids[name][:0] = ids
                owners[(p.owner, name)] -= 1
            continue
        placed += len(taken)
    return placed


# ----------------------------------------------------------------------------- checks


def verify(nodes: Sequence[NodeInfo], pending: Sequence[Pending], result: Schedule) -> list[str]:
    problems: list[str] = []
    by_id = {p.id: p for p in pending}
    by_node = {n.name: n for n in nodes}
    use: dict[str, list[int]] = {n.name: [0, 0] for n in nodes}
    gpus: dict[str, set[str]] = {n.name: set() for n in nodes}
    for b in result.bindings:
        r = by_id[b.id].requests
        use[b.node][0] += r.cpu
        use[b.node][1] += r.memory
        if len(b.gpus) != r.gpu:
            problems.append(f"{b.id}: {len(b.gpus)} gpu ids for gpu {r.gpu}")
        for g in b.gpus:
            if g in gpus[b.node] or g not in by_node[b.node].gpu_ids:
                problems.append(f"{b.id}: gpu id {g} on {b.node} taken twice or unknown")
            gpus[b.node].add(g)
    for name, (c, m) in use.items():
        capacity = by_node[name].capacity
        if c > capacity.cpu or m > capacity.memory:
            problems.append(f"{name} over-allocated")
    bound_ids = {b.id for b in result.bindings}
    gangs: dict[str, list[str]] = {}
    for p in pending:
        if p.gang:
            gangs.setdefault(p.gang, []).append(p.id)
        if p.id not in bound_ids and not result.pending.get(p.id):
            problems.append(f"{p.id}: neither bound nor given a reason")
    for gang, ids in gangs.items():
        inside = sum(1 for i in ids if i in bound_ids)
        if inside not in (0, len(ids)):
            problems.append(f"gang {gang} placed in part ({inside} of {len(ids)})")
    return problems[:20]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scheduling throughput of one pass.")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3, help="best of N (3)")
    parser.add_argument(
        "--naive-items", type=int, default=1000, help="items the naive reference runs (1000)"
    )
    args = parser.parse_args(argv)
    started_at = datetime.now(UTC)
    rng = random.Random(args.seed)
    nodes = build_nodes(args.nodes, rng)
    pending = build_pending(args.items, rng)
    gpu_nodes = sum(1 for n in nodes if n.capacity.gpu)
    print(
        f"{len(nodes)} nodes ({gpu_nodes} with GPUs, {sum(n.capacity.gpu for n in nodes)} GPUs), "
        f"{len(pending)} pending items "
        f"({sum(1 for p in pending if p.gang)} gang workers in "
        f"{len({p.gang for p in pending if p.gang})} gangs), one call per run",
        flush=True,
    )

    times: list[float] = []
    result: Schedule | None = None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = schedule(nodes, [], pending, QUEUES)
        times.append(time.perf_counter() - t0)
    assert result is not None
    best = min(times)
    placed = len(result.bindings)
    per_s = placed / best if best > 0 else float("inf")
    items_per_s = len(pending) / best if best > 0 else float("inf")
    problems = verify(nodes, pending, result)
    nodes_used = len({b.node for b in result.bindings})
    spread = _replica_spread(pending, result.bindings)
    reasons: dict[str, int] = {}
    for text in result.pending.values():
        head = _reason_kind(text)
        reasons[head] = reasons.get(head, 0) + 1
    print(
        f"schedule(): best {best * 1000:.0f} ms of {[round(t * 1000) for t in times]}; "
        f"placed {placed}, pending {len(result.pending)}; {per_s:,.0f} placements/s "
        f"({items_per_s:,.0f} items decided/s); {nodes_used} nodes used",
        flush=True,
    )
    print(f"replicas of one deployment on one node, at most: {spread}")
    for head, n in sorted(reasons.items(), key=lambda x: -x[1])[:6]:
        print(f"  pending {n:>5}: {head}")
    print("correctness:", "ok" if not problems else "; ".join(problems))

    naive_pending = pending[: args.naive_items]
    t0 = time.perf_counter()
    naive_placed = naive_schedule(nodes, naive_pending)
    naive_s = time.perf_counter() - t0
    naive_per_item = naive_s / max(1, len(naive_pending))
    naive_full_s = naive_per_item * len(pending)
    naive_per_s = naive_placed / naive_s if naive_s > 0 else float("inf")
    print(
        f"naive reference: {len(naive_pending)} items in {naive_s:.2f} s "
        f"({naive_placed} placed, {naive_per_s:,.0f} placements/s); "
        f"extrapolated to {len(pending)} items: {naive_full_s:.1f} s",
        flush=True,
    )
    speedup = naive_full_s / best if best > 0 else None

    ratios: list[dict[str, Any]] = [
        {
            "name": "placements/s / issue target 5,000/s",
            "value": per_s / TARGET_PER_S,
            "target": ">= 1",
            "met": per_s >= TARGET_PER_S,
            "detail": f"{per_s:,.0f}/s on {os.cpu_count()} CPUs",
        },
        {
            "name": "placements/s / kube-scheduler 100 pods/s",
            "value": per_s / KUBE_SCHEDULER_PER_S,
            "target": ">= 1",
            "met": per_s >= KUBE_SCHEDULER_PER_S,
            "detail": "SIG Scalability throughput target; not the same workload",
        },
        {
            "name": "naive full-scan time / schedule() time",
            "value": speedup,
            "target": "> 1",
            "met": speedup is not None and speedup > 1,
            "detail": f"{naive_full_s:.1f} s extrapolated vs {best:.2f} s",
        },
        {
            "name": "correctness problems",
            "value": float(len(problems)),
            "target": "0",
            "met": not problems,
            "detail": None,
        },
    ]
    print()
    print_ratios(ratios)
    out = write_result(
        "scheduler",
        started_at,
        {
            "benchmark": "scheduler",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "nodes": args.nodes,
                "items": args.items,
                "seed": args.seed,
                "runs": args.runs,
                "naive_items": args.naive_items,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
            "environment": {"source_sha256": source_fingerprint()},
            "results": {
                "times_s": times,
                "best_s": best,
                "placed": placed,
                "pending": len(result.pending),
                "placements_per_s": per_s,
                "items_per_s": items_per_s,
                "nodes_used": nodes_used,
                "max_replicas_of_one_deployment_on_one_node": spread,
                "pending_reasons": reasons,
                "sample_reasons": dict(list(result.pending.items())[:20]),
                "preemptions": len(result.preemptions),
                "problems": problems,
                "naive": {
                    "items": len(naive_pending),
                    "seconds": naive_s,
                    "placed": naive_placed,
                    "placements_per_s": naive_per_s,
                    "extrapolated_s": naive_full_s,
                },
            },
            "ratios": ratios,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    print(f"(best {fmt(best, 3)} s)")
    return 0


def _reason_kind(text: str) -> str:
    if text.startswith("queue "):
        return "queue quota"
    if text.startswith("gang "):
        return "gang: none fit now" if "none fit" in text else "gang: only some fit now"
    if text.startswith("needs "):
        return "needs more than any node has free"
    return text.split("(")[0].strip()


def _replica_spread(pending: Sequence[Pending], bindings: Sequence[Binding]) -> int:
    owner = {p.id: p.owner for p in pending if p.gang is None}
    counts: dict[tuple[str, str], int] = {}
    for b in bindings:
        if b.id in owner:
            key = (owner[b.id], b.node)
            counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
