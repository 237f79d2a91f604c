"""Unit tests for the pure scheduler: filter, score, bind, gangs, queues, preemption, reasons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilothouse.policy.scheduler import (
    Bound,
    NodeInfo,
    Pending,
    QueueInfo,
    Quota,
    Resources,
    Schedule,
    check_fits,
    schedule,
)

GI = 2**30
MI = 2**20
X = "\u00d7"  # the multiplication sign in "gang of 4 <X> (gpu 2)"


def res(cpu: float = 0, mem: float = 0, gpu: int = 0) -> Resources:
    return Resources(round(cpu * 1000), round(mem * GI), gpu)


def node(
    name: str, cpu: float = 8, mem: float = 32, gpu: int = 0, state: str = "Ready"
) -> NodeInfo:
    return NodeInfo(
        name,
        res(cpu, mem, gpu),
        tuple(str(k) for k in range(gpu)),
        schedulable=state == "Ready",
        state=state,
    )


def item(iid: str, cpu: float = 1, mem: float = 1, gpu: int = 0, **kw: Any) -> Pending:
    return Pending(iid, res(cpu, mem, gpu), **kw)


def workers(
    job: str,
    size: int,
    cpu: float = 1,
    mem: float = 1,
    gpu: int = 0,
    present: int | None = None,
    **kw: Any,
) -> list[Pending]:
    kw.setdefault("preemptible", True)
    return [
        Pending(
            f"{job}-w{k}",
            res(cpu, mem, gpu),
            owner=f"TrainingJob/{job}",
            gang=f"{job}-a1",
            gang_size=size,
            spread=False,
            **kw,
        )
        for k in range(size if present is None else present)
    ]


def bound(bid: str, on: str, cpu: float = 1, mem: float = 1, gpu: int = 0, **kw: Any) -> Bound:
    return Bound(bid, on, res(cpu, mem, gpu), **kw)


def bound_workers(
    job: str, on: Sequence[str], gpu: int = 0, gpus: Sequence[tuple[str, ...]] = (), **kw: Any
) -> list[Bound]:
    kw.setdefault("preemptible", True)
    return [
        Bound(
            f"{job}-w{k}",
            name,
            res(1, 1, gpu),
            gpus=gpus[k] if gpus else (),
            owner=f"TrainingJob/{job}",
            gang=f"{job}-a1",
            **kw,
        )
        for k, name in enumerate(on)
    ]


def run(
    nodes: Sequence[NodeInfo],
    pending: Sequence[Pending],
    bound_: Sequence[Bound] = (),
    queues: dict[str, QueueInfo] | None = None,
) -> Schedule:
    return schedule(nodes, bound_, pending, queues or {})


def placed(result: Schedule) -> dict[str, str]:
    return {b.id: b.node for b in result.bindings}


# ----------------------------------------------------------------------------- resources


def test_resources_arithmetic() -> None:
    a = Resources(1500, 2 * GI, 1)
    b = Resources(500, GI, 0)
    assert a + b == Resources(2000, 3 * GI, 1)
    assert a - b == Resources(1000, GI, 1)
    assert b.fits_in(a)
    assert not a.fits_in(b)
    assert b.scaled(3) == Resources(1500, 3 * GI, 0)
    assert Resources().is_zero()


@pytest.mark.parametrize(
    ("resources", "text"),
    [
        (Resources(1500, 2 * GI, 1), "cpu 1500m, memory 2Gi, gpu 1"),
        (Resources(2000), "cpu 2"),
        (Resources(500, 512 * MI), "cpu 500m, memory 512Mi"),
        (Resources(memory=3 * GI // 2), "memory 1.5Gi"),
        (Resources(memory=4 * 1024), "memory 4Ki"),
        (Resources(gpu=8), "gpu 8"),
        (Resources(), "nothing"),
    ],
)
def test_describe_uses_human_units(resources: Resources, text: str) -> None:
    assert resources.describe() == text


# --------------------------------------------------------------------------------- filter


def test_item_goes_only_where_every_dimension_fits() -> None:
    nodes = [node("a", cpu=2, mem=64), node("b", cpu=16, mem=2), node("c", cpu=8, mem=16)]
    result = run(nodes, [item("x", cpu=4, mem=8)])
    assert placed(result) == {"x": "c"}
    assert result.pending == {}


def test_bound_work_terminating_included_takes_room() -> None:
    nodes = [node("a", cpu=4), node("b", cpu=4)]
    taken = [bound("r1", "a", cpu=3), bound("r2", "b", cpu=2, terminating=True)]
    result = run(nodes, [item("x", cpu=2)], taken)
    assert placed(result) == {"x": "b"}
    result = run(nodes, [item("x", cpu=3)], taken)
    assert placed(result) == {}
    assert "terminating" in result.pending["x"]


def test_bindings_in_the_same_pass_count() -> None:
    result = run([node("a", cpu=4)], [item(f"x{k}", cpu=1.5) for k in range(3)])
    assert len(result.bindings) == 2
    (left,) = result.pending
    assert "needs cpu 1500m, memory 1Gi; most free on any node: cpu 1 (a)" in result.pending[left]


def test_cordoned_draining_and_lost_nodes_get_nothing() -> None:
    nodes = [
        node("a", state="Cordoned"),
        node("b", state="Draining"),
        node("c", state="Lost"),
        node("d", cpu=1),
    ]
    result = run(nodes, [item("x", cpu=1), item("y", cpu=1)])
    assert set(placed(result).values()) == {"d"}
    (left,) = result.pending
    assert result.pending[left] == (
        "needs cpu 1, memory 1Gi; most free on any node: cpu 0 (d) "
        "(not counting 1 cordoned, 1 draining, 1 lost)"
    )


def test_no_schedulable_node_says_why() -> None:
    nodes = [node("a", state="Cordoned"), node("b", state="Cordoned"), node("c", state="Lost")]
    result = run(nodes, [item("x")])
    assert result.pending == {"x": "no node can take work: 2 cordoned, 1 lost"}
    assert run([], [item("x")]).pending == {"x": "no nodes"}


# ---------------------------------------------------------------------------------- spread


def test_replicas_spread_across_nodes() -> None:
    nodes = [node(n) for n in "abc"]
    replicas = [item(f"r{k}", owner="ModelDeployment/fraud") for k in range(6)]
    result = run(nodes, replicas)
    per_node: dict[str, int] = {}
    for name in placed(result).values():
        per_node[name] = per_node.get(name, 0) + 1
    assert per_node == {"a": 2, "b": 2, "c": 2}


def test_spread_counts_replicas_already_running() -> None:
    nodes = [node("a"), node("b")]
    running = [bound("r0", "a", owner="ModelDeployment/fraud")]
    result = run(nodes, [item("r1", owner="ModelDeployment/fraud")], running)
    assert placed(result) == {"r1": "b"}


def test_spread_prefers_the_least_allocated_node() -> None:
    nodes = [node("a"), node("b")]
    busy = [bound("other", "a", cpu=6, owner="ModelDeployment/other")]
    result = run(nodes, [item("r1", owner="ModelDeployment/fraud")], busy)
    assert placed(result) == {"r1": "b"}


def test_cpu_work_keeps_off_gpu_nodes_while_it_can() -> None:
    nodes = [node("gpu-a", cpu=64, gpu=8), node("cpu-a", cpu=4), node("cpu-b", cpu=4)]
    result = run(nodes, [item(f"r{k}", cpu=2, owner="ModelDeployment/m") for k in range(5)])
    where = sorted(placed(result).values())
    assert where.count("gpu-a") == 1  # only once the cpu nodes are full
    assert where.count("cpu-a") == 2
    assert where.count("cpu-b") == 2


# ------------------------------------------------------------------------------------ gangs


def test_gang_packs_onto_one_node() -> None:
    nodes = [node("a", cpu=32, gpu=8), node("b", cpu=32, gpu=8), node("c", cpu=32, gpu=8)]
    result = run(nodes, workers("train", 4, gpu=2))
    assert len(set(placed(result).values())) == 1
    assert result.pending == {}


def test_gang_fills_the_fullest_node_that_takes_it_whole() -> None:
    nodes = [node("a", cpu=32, gpu=8), node("b", cpu=32, gpu=8), node("c", cpu=32, gpu=8)]
    busy = [bound("svc", "b", gpu=4, gpus=("0", "1", "2", "3"))]
    result = run(nodes, workers("train", 2, gpu=2), busy)
    assert set(placed(result).values()) == {"b"}


def test_gang_spans_nodes_when_it_must() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    result = run(nodes, workers("train", 4, gpu=2))
    where = list(placed(result).values())
    assert sorted(where) == ["a", "a", "b", "b"]


def test_gang_is_all_or_nothing() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    result = run(nodes, [*workers("big", 3, gpu=4), item("small", gpu=1)])
    assert "big-w0" not in placed(result)
    assert [b.id for b in result.bindings] == ["small"]
    reason = result.pending["big-w2"]
    assert reason.startswith(f"gang of 3 {X} (cpu 1, memory 1Gi, gpu 4): only 1 fit now")
    assert set(result.pending) == {"big-w0", "big-w1", "big-w2"}


def test_failed_gang_leaves_no_trace_for_later_items() -> None:
    nodes = [node("a", cpu=4, mem=8), node("b", cpu=4, mem=8)]
    # the gang fits in part (two of three), then is undone: both nodes free again
    pending = [*workers("g", 3, cpu=4, priority=10), item("x", cpu=4), item("y", cpu=4)]
    result = run(nodes, pending)
    assert sorted(placed(result)) == ["x", "y"]


def test_gang_waits_for_all_its_workers() -> None:
    nodes = [node("a", cpu=32, gpu=8)]
    result = run(nodes, workers("train", 4, gpu=1, present=3))
    assert result.bindings == []
    assert result.pending == {
        f"train-w{k}": "waiting for the gang's other workers (3 of 4 submitted)" for k in range(3)
    }


def test_gang_members_already_bound_count_as_submitted() -> None:
    nodes = [node("a", cpu=32, gpu=8)]
    pending = [w for w in workers("train", 2, gpu=1) if w.id == "train-w1"]
    already = [Bound("train-w0", "a", res(1, 1, 1), gpus=("0",), gang="train-a1")]
    result = run(nodes, pending, already)
    assert [(b.id, b.gpus) for b in result.bindings] == [("train-w1", ("1",))]


# --------------------------------------------------------------------------------- gpu ids


def test_gpu_ids_are_the_lowest_free_ones() -> None:
    nodes = [node("a", cpu=32, gpu=8)]
    taken = [bound("old", "a", gpu=2, gpus=("0", "2"))]
    result = run(nodes, [item("x", gpu=3, spread=False), item("y", gpu=2, spread=False)], taken)
    gpus = {b.id: b.gpus for b in result.bindings}
    assert gpus == {"x": ("1", "3", "4"), "y": ("5", "6")}


def test_gpu_ids_follow_the_node_order_for_uuids() -> None:
    uuids = ("GPU-c", "GPU-a", "GPU-b")
    n = NodeInfo("a", res(8, 32, 3), gpu_ids=uuids)
    result = run([n], [item("x", gpu=2)])
    assert result.bindings[0].gpus == ("GPU-c", "GPU-a")


def test_gpu_ids_default_to_indexes() -> None:
    n = NodeInfo("a", res(8, 32, 2))
    result = run([n], [item("x", gpu=2)])
    assert result.bindings[0].gpus == ("0", "1")


# ----------------------------------------------------------------------------------- order


def test_higher_priority_goes_first() -> None:
    nodes = [node("a", cpu=1)]
    result = run(nodes, [item("low", priority=0, created=0), item("high", priority=5, created=9)])
    assert placed(result) == {"high": "a"}
    assert "low" in result.pending


def test_queue_priority_beats_priority() -> None:
    nodes = [node("a", cpu=1)]
    queues = {"prod": QueueInfo("prod", priority=10), "dev": QueueInfo("dev")}
    pending = [item("dev", priority=1000, queue="dev"), item("prod", queue="prod")]
    assert placed(run(nodes, pending, queues=queues)) == {"prod": "a"}


def test_item_queue_priority_is_used_for_unknown_queues() -> None:
    nodes = [node("a", cpu=1)]
    pending = [item("x", priority=1000), item("y", queue="q", queue_priority=1)]
    assert placed(run(nodes, pending)) == {"y": "a"}


def test_older_first_then_id() -> None:
    nodes = [node("a", cpu=2)]
    pending = [item("c", created=5), item("b", created=1), item("a", created=5)]
    assert sorted(placed(run(nodes, pending))) == ["a", "b"]


# ---------------------------------------------------------------------------------- quotas


def test_quota_blocks_the_dimension_it_limits() -> None:
    nodes = [node("a", cpu=64, gpu=8)]
    queues = {"research": QueueInfo("research", Quota(gpu=4))}
    running = bound_workers("old", ["a"] * 2, gpu=2, queue="research")
    pending = [
        *workers("more", 1, gpu=2, queue="research"),
        *workers("cpu-only", 2, cpu=16, queue="research"),
    ]
    result = run(nodes, pending, running, queues)
    assert result.pending == {"more-w0": "queue 'research' quota: gpu 4 in use of 4; this needs 2"}
    assert sorted(placed(result)) == ["cpu-only-w0", "cpu-only-w1"]


def test_quota_counts_this_pass_and_each_dimension() -> None:
    nodes = [node("a", cpu=64, mem=256)]
    queues = {"q": QueueInfo("q", Quota(cpu=4000, memory=100 * GI))}
    pending = [item(f"x{k}", cpu=3, mem=1, queue="q", created=k) for k in range(2)]
    pending.append(item("big", cpu=0.5, mem=200, queue="q", created=5))
    result = run(nodes, pending, queues=queues)
    assert placed(result) == {"x0": "a"}
    assert result.pending["x1"] == "queue 'q' quota: cpu 3 in use of 4; this needs 3"
    assert result.pending["big"] == "queue 'q' quota: memory 1Gi in use of 100Gi; this needs 200Gi"


def test_unknown_queue_is_unlimited() -> None:
    result = run([node("a", gpu=8)], [item("x", gpu=8, queue="nobody-declared")])
    assert placed(result) == {"x": "a"}


# ------------------------------------------------------------------------------ fair share


def test_fair_share_follows_queue_weights() -> None:
    nodes = [node("a", cpu=64, gpu=4)]
    queues = {"a": QueueInfo("a", weight=3.0), "b": QueueInfo("b", weight=1.0)}
    pending = [item(f"a{k}", gpu=1, queue="a", created=k) for k in range(4)]
    pending += [item(f"b{k}", gpu=1, queue="b", created=10 + k) for k in range(4)]
    got = placed(run(nodes, pending, queues=queues))
    assert sum(1 for i in got if i.startswith("a")) == 3
    assert sum(1 for i in got if i.startswith("b")) == 1


def test_fair_share_serves_the_queue_that_has_less_first() -> None:
    nodes = [node("a", cpu=64, gpu=8)]
    queues = {"rich": QueueInfo("rich"), "poor": QueueInfo("poor")}
    running = bound_workers("old", ["a"] * 4, gpu=1, queue="rich")
    pending = [item(f"r{k}", gpu=1, queue="rich", created=k) for k in range(4)]
    pending += [item(f"p{k}", gpu=1, queue="poor", created=10 + k) for k in range(4)]
    got = placed(run(nodes, pending, running, queues))
    assert sorted(got) == ["p0", "p1", "p2", "p3"]


# ------------------------------------------------------------------------------ preemption


def test_preempts_a_lower_priority_gang_whole() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    low = bound_workers("low", ["a", "b"], gpu=2, gpus=[("0", "1"), ("0", "1")])
    busy_b = [bound("svc", "b", gpu=2, gpus=("2", "3"), owner="ModelDeployment/m")]
    urgent = workers("urgent", 2, gpu=2, priority=100)
    result = run(nodes, urgent, [*low, *busy_b])
    assert result.bindings == []
    (pre,) = result.preemptions
    assert set(pre.victims) == {"low-w0", "low-w1"}  # evicting one kills its gang
    assert pre.preemptor == "urgent-a1"
    assert pre.reason == (
        "preempted by TrainingJob/urgent (priority 100 > 0): needs cpu 2, memory 2Gi, gpu 4"
    )
    assert result.pending["urgent-w0"] == (
        "waiting for 2 preempted workers of TrainingJob/low to stop "
        "(cpu 2, memory 2Gi, gpu 4 needed)"
    )


def test_preempts_only_strictly_lower_priority() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    same = bound_workers("peer", ["a"], gpu=4, gpus=[("0", "1", "2", "3")], priority=100)
    result = run(nodes, workers("urgent", 1, gpu=4, priority=100), same)
    assert result.preemptions == []
    assert "needs" in result.pending["urgent-w0"]


def test_queue_priority_orders_victims() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    queues = {"prod": QueueInfo("prod", priority=5), "dev": QueueInfo("dev")}
    dev = bound_workers("dev", ["a"], gpu=4, gpus=[("0", "1", "2", "3")], queue="dev")
    result = run(nodes, workers("p", 1, gpu=4, queue="prod"), dev, queues)
    (pre,) = result.preemptions
    assert pre.victims == ("dev-w0",)
    assert "queue priority 5 > 0" in pre.reason


def test_never_preempts_replicas() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    replica = [bound("svc", "a", gpu=4, gpus=("0", "1", "2", "3"), owner="ModelDeployment/m")]
    result = run(nodes, workers("urgent", 1, gpu=4, priority=100), replica)
    assert result.preemptions == []
    # a gang of one is described like any single item
    assert result.pending["urgent-w0"].startswith("needs cpu 1, memory 1Gi, gpu 4")


def test_picks_the_lowest_priority_then_the_newest_victims() -> None:
    nodes = [node(n, cpu=32, gpu=4) for n in "abc"]
    four = ("0", "1", "2", "3")
    running = [
        *bound_workers("old", ["a"], gpu=4, gpus=[four], priority=0),
        *bound_workers("mid", ["b"], gpu=4, gpus=[four], priority=10),
        *bound_workers("new", ["c"], gpu=4, gpus=[four], priority=0),
    ]
    result = run(nodes, workers("urgent", 1, gpu=4, priority=100), running)
    (pre,) = result.preemptions
    assert pre.victims == ("new-w0",)


def test_does_not_evict_victims_on_nodes_it_will_not_use() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    four = ("0", "1", "2", "3")
    running = [
        *bound_workers("x", ["a"], gpu=4, gpus=[four]),
        *bound_workers("y", ["b"], gpu=2, gpus=[("0", "1")]),
        bound("svc", "b", gpu=2, gpus=("2", "3"), owner="ModelDeployment/m"),
    ]
    # y (listed later: newest) is taken first, but b cannot hold 4 gpus without the
    # replica; x makes room on a, and y is spared
    result = run(nodes, workers("urgent", 1, gpu=4, priority=100), running)
    (pre,) = result.preemptions
    assert pre.victims == ("x-w0",)


def test_waits_for_terminating_work_instead_of_preempting_again() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    stopping = bound_workers(
        "low", ["a", "a"], gpu=2, gpus=[("0", "1"), ("2", "3")], terminating=True
    )
    also_low = bound_workers("other", ["a"], gpu=0)
    result = run(nodes, workers("urgent", 1, gpu=4, priority=100), [*stopping, *also_low])
    assert result.preemptions == []
    assert result.pending["urgent-w0"] == (
        "waiting for 2 terminating workers of TrainingJob/low to stop (cpu 1, memory 1Gi, gpu 4 needed)"
    )


def test_no_preemption_when_hopeless() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    low = bound_workers("low", ["a"], gpu=4, gpus=[("0", "1", "2", "3")])
    result = run(nodes, workers("huge", 2, gpu=4, priority=100), low)
    assert result.preemptions == []
    reason = result.pending["huge-w0"]
    assert f"gang of 2 {X} (cpu 1, memory 1Gi, gpu 4): none fit now" in reason
    assert reason.endswith("preempting all lower-priority work would not make room")


def test_room_freed_by_preemption_is_reserved_for_the_preemptor() -> None:
    nodes = [node("a", cpu=32, gpu=4)]
    low = bound_workers("low", ["a"], gpu=2, gpus=[("0", "1")])
    pending = [*workers("urgent", 1, gpu=4, priority=100), item("mid", gpu=1, priority=50)]
    result = run(nodes, pending, low)
    (pre,) = result.preemptions
    assert pre.victims == ("low-w0",)
    assert result.bindings == []  # mid may not take the 2 free gpus urgent will need
    assert "mid" in result.pending


def test_one_victim_set_per_preemptor_in_a_pass() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    four = ("0", "1", "2", "3")
    low = [
        *bound_workers("l1", ["a"], gpu=4, gpus=[four]),
        *bound_workers("l2", ["b"], gpu=4, gpus=[four]),
    ]
    pending = [*workers("u1", 1, gpu=4, priority=100), *workers("u2", 1, gpu=4, priority=90)]
    result = run(nodes, pending, low)
    victims = [set(p.victims) for p in result.preemptions]
    assert len(victims) == 2
    assert victims[0].isdisjoint(victims[1])
    assert [p.preemptor for p in result.preemptions] == ["u1-a1", "u2-a1"]


# --------------------------------------------------------------------------------- reasons


def test_reason_names_the_short_dimension_and_the_best_node() -> None:
    nodes = [node("a", cpu=32, gpu=4), node("b", cpu=32, gpu=4)]
    taken = [bound("x", "a", gpu=4, gpus=("0", "1", "2", "3")), bound("y", "b", gpu=3)]
    result = run(nodes, [item("p", gpu=2)], taken)
    assert result.pending["p"] == "needs cpu 1, memory 1Gi, gpu 2; most free on any node: gpu 1 (b)"


def test_reason_when_the_request_exceeds_every_node() -> None:
    nodes = [node("a", cpu=8, gpu=2), node("b", cpu=4)]
    result = run(nodes, [item("p", gpu=4)])
    assert (
        result.pending["p"] == "needs cpu 1, memory 1Gi, gpu 4 but the largest node has gpu 2 (a)"
    )


def test_reason_when_no_node_has_every_dimension_free() -> None:
    nodes = [node("a", cpu=8, mem=2), node("b", cpu=1, mem=64)]
    result = run(nodes, [item("p", cpu=4, mem=8)])
    assert result.pending["p"] == (
        "needs cpu 4, memory 8Gi; no node has all of it free; closest: a (cpu 8, memory 2Gi free)"
    )


def test_reasons_are_computed_once_per_shape_but_given_to_each_item() -> None:
    nodes = [node("a", cpu=1)]
    result = run(nodes, [item(f"x{k}", cpu=2) for k in range(50)])
    assert len(result.pending) == 50
    assert len(set(result.pending.values())) == 1


# ----------------------------------------------------------------------------- check_fits


def test_check_fits_ok() -> None:
    nodes = [node("a", cpu=8, gpu=4), node("b", cpu=8, gpu=4, state="Cordoned")]
    assert check_fits(res(1, 1, 2), 4, nodes) is None
    assert check_fits(Resources(), 100, nodes) is None


def test_check_fits_too_big_for_any_node() -> None:
    nodes = [node("node-a", gpu=2), node("node-b")]
    assert check_fits(Resources(gpu=4), 1, nodes) == (
        "requests gpu 4 but the largest node has gpu 2 (node-a)"
    )


def test_check_fits_gang_larger_than_the_cluster() -> None:
    nodes = [node("node-a", cpu=8, gpu=4), node("node-b", cpu=8, gpu=4), node("c", state="Lost")]
    assert check_fits(res(cpu=1, gpu=2), 5, nodes) == (
        f"a gang of 5 workers {X} (cpu 1, gpu 2) does not fit: the cluster holds at most 4 "
        "(node-a 2, node-b 2)"
    )


def test_check_fits_ignores_lost_nodes_only() -> None:
    lost = [node("a", gpu=8, state="Lost")]
    assert check_fits(Resources(gpu=1), 1, lost) == "no nodes (1 lost)"
    cordoned = [node("a", gpu=8, state="Cordoned")]
    assert check_fits(Resources(gpu=8), 1, cordoned) is None


def test_check_fits_no_node_has_every_dimension() -> None:
    nodes = [node("a", cpu=8, mem=2), node("b", cpu=1, mem=64)]
    reason = check_fits(res(cpu=4, mem=8), 1, nodes)
    assert reason is not None
    assert reason.startswith("requests cpu 4, memory 8Gi but no node has all of it; closest: a")


# ------------------------------------------------------------------------------ at scale


def test_sampling_still_fills_the_cluster_exactly() -> None:
    nodes = [node(f"n{k:03d}", cpu=4, mem=64) for k in range(300)]
    pending = [item(f"x{k:04d}", cpu=1, owner=f"ModelDeployment/m{k % 7}") for k in range(1500)]
    result = run(nodes, pending)
    assert len(result.bindings) == 1200
    assert len(result.pending) == 300
    assert set(result.pending.values()) == {
        "needs cpu 1, memory 1Gi; most free on any node: cpu 0 (n000)"
    }
    assert_valid(nodes, [], pending, result)


def test_sampling_spreads_replicas_of_one_deployment() -> None:
    nodes = [node(f"n{k:03d}", cpu=64, mem=256) for k in range(500)]
    pending = [item(f"r{k}", owner="ModelDeployment/m") for k in range(400)]
    result = run(nodes, pending)
    assert len(set(placed(result).values())) == 400


def test_same_input_same_output() -> None:
    nodes = [node(f"n{k}", cpu=8, gpu=4 * (k % 2)) for k in range(40)]
    pending = [item(f"r{k}", cpu=1 + k % 3, gpu=k % 2, owner=f"M/{k % 5}") for k in range(100)]
    pending += workers("g", 6, gpu=2)
    assert run(nodes, pending) == run(nodes, pending)


# ------------------------------------------------------------------------------ properties


def assert_valid(
    nodes: Sequence[NodeInfo],
    bound_: Sequence[Bound],
    pending: Sequence[Pending],
    result: Schedule,
) -> None:
    by_node = {n.name: n for n in nodes}
    by_id = {p.id: p for p in pending}
    use = {n.name: [0, 0, 0] for n in nodes}
    ids: dict[str, set[str]] = {n.name: set() for n in nodes}
    for b in bound_:
        if b.node in use:
            use[b.node][0] += b.requests.cpu
            use[b.node][1] += b.requests.memory
            use[b.node][2] += b.requests.gpu
            ids[b.node].update(b.gpus)
    bound_ids = set()
    for binding in result.bindings:
        assert binding.id in by_id
        assert binding.id not in bound_ids
        bound_ids.add(binding.id)
        n = by_node[binding.node]
        assert n.schedulable
        r = by_id[binding.id].requests
        assert len(binding.gpus) == r.gpu
        for g in binding.gpus:
            assert g in n.gpu_ids
            assert g not in ids[n.name]
            ids[n.name].add(g)
        use[n.name][0] += r.cpu
        use[n.name][1] += r.memory
        use[n.name][2] += r.gpu
    for name in {binding.node for binding in result.bindings}:
        cap = by_node[name].capacity
        assert use[name][0] <= cap.cpu
        assert use[name][1] <= cap.memory
        assert use[name][2] <= cap.gpu
    for p in pending:
        assert (p.id in bound_ids) != bool(result.pending.get(p.id))
    gangs: dict[str, list[str]] = {}
    for p in pending:
        if p.gang is not None:
            gangs.setdefault(p.gang, []).append(p.id)
    for members in gangs.values():
        assert sum(1 for m in members if m in bound_ids) in (0, len(members))
    victims = [v for pre in result.preemptions for v in pre.victims]
    assert len(victims) == len(set(victims))
    eligible = {b.id for b in bound_ if b.preemptible and not b.terminating}
    assert set(victims) <= eligible


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeInfo], list[Bound], list[Pending]]:
    nodes = []
    for k in range(draw(st.integers(0, 6))):
        state = draw(st.sampled_from(["Ready", "Ready", "Ready", "Cordoned", "Lost"]))
        nodes.append(
            node(
                f"n{k}",
                cpu=draw(st.integers(1, 16)),
                mem=draw(st.integers(1, 32)),
                gpu=draw(st.sampled_from([0, 2, 4])),
                state=state,
            )
        )
    bound_: list[Bound] = []
    for k in range(draw(st.integers(0, 6))):
        if not nodes:
            break
        n = draw(st.sampled_from(nodes))
        gpu = draw(st.integers(0, n.capacity.gpu))
        free = [g for g in n.gpu_ids if all(g not in b.gpus for b in bound_ if b.node == n.name)]
        gpu = min(gpu, len(free))
        bound_.append(
            Bound(
                f"b{k}",
                n.name,
                res(draw(st.integers(0, 4)), draw(st.integers(0, 4)), gpu),
                gpus=tuple(free[:gpu]),
                owner=f"TrainingJob/b{k}",
                gang=draw(st.sampled_from([None, "bg1", "bg2"])),
                priority=draw(st.integers(0, 2)),
                preemptible=draw(st.booleans()),
                terminating=draw(st.booleans()),
            )
        )
    pending: list[Pending] = []
    for k in range(draw(st.integers(0, 10))):
        gang = draw(st.sampled_from([None, None, "g1", "g2"]))
        pending.append(
            Pending(
                f"p{k}",
                res(draw(st.integers(0, 8)), draw(st.integers(0, 8)), draw(st.integers(0, 4))),
                owner=f"O/{draw(st.integers(0, 2))}",
                gang=gang,
                gang_size=draw(st.integers(1, 3)) if gang else 1,
                queue=draw(st.sampled_from([None, "q1", "q2"])),
                priority=draw(st.integers(0, 3)),
                created=float(draw(st.integers(0, 5))),
                spread=gang is None,
            )
        )
    return nodes, bound_, pending


@given(clusters())
@settings(max_examples=300, deadline=None)
def test_never_over_allocates_and_gangs_are_whole(
    cluster: tuple[list[NodeInfo], list[Bound], list[Pending]],
) -> None:
    nodes, bound_, pending = cluster
    queues = {"q1": QueueInfo("q1", Quota(gpu=4)), "q2": QueueInfo("q2", weight=2.0)}
    result = schedule(nodes, bound_, pending, queues)
    assert_valid(nodes, bound_, pending, result)
    rank = {b.id: b.priority for b in bound_}
    for pre in result.preemptions:
        preemptor = max(p.priority for p in pending if pre.preemptor in (p.id, p.gang))
        assert all(rank[v] < preemptor for v in pre.victims)
        assert all(result.pending.get(p.id) for p in pending if pre.preemptor in (p.id, p.gang))
