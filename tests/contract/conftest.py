"""The controller contract suite: the real controllers in a :class:`~tests.contract.harness.World`.

Every test runs in each world of ``WORLDS``: the in-memory ports (with and without change
notifications) and the embedded backend with real processes (``embedded``, marked
``integration``; every test runs there too), so each backend must make the controllers
behave the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.contract.embedded_world import EmbeddedWorld
from tests.contract.harness import World
from tests.contract.memory_world import MemoryWorld


async def _memory(_root: Path) -> World:
    return MemoryWorld()


async def _memory_unwatched(_root: Path) -> World:
    # the same without change notifications: controllers only see what changed when
    # their requeue (or the resync) comes; level-based controllers converge all the same,
    # and no status they write in between may claim what is not so
    return MemoryWorld(watch=False)


async def _embedded(root: Path) -> World:
    return await EmbeddedWorld.create(root)


#: name -> how to make the world (given a folder of its own)
WORLDS: dict[str, Callable[[Path], Awaitable[World]]] = {
    "memory": _memory,
    "memory-unwatched": _memory_unwatched,
    "embedded": _embedded,
}
#: worlds with real processes
INTEGRATION = {"embedded"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(
    params=[
        pytest.param(name, marks=pytest.mark.integration) if name in INTEGRATION else name
        for name in sorted(WORLDS)
    ]
)
async def world(
    request: pytest.FixtureRequest, anyio_backend: str, tmp_path: Path
) -> AsyncIterator[World]:
    made = await WORLDS[request.param](tmp_path)
    try:
        yield made
    finally:
        await made.close()
