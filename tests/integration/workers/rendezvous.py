"""A gang worker that meets the others at MASTER_ADDR:MASTER_PORT, as torch.distributed would.

Rank 0 listens there; every other rank connects, says who it is, and gets the list of all
ranks back. Each rank writes what it learnt and its environment to
``$PILOTHOUSE_OUTPUT_DIR/rank-N.json``. Exits non-zero if the gang does not assemble.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "PILOTHOUSE_NODE",
    "PILOTHOUSE_CHECKPOINT_DIR",
)


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    deadline = time.monotonic() + 60
    if rank == 0:
        server = socket.create_server((addr, port))
        server.settimeout(60)
        peers, conns = {0: os.environ["PILOTHOUSE_NODE"]}, []
        while len(peers) < world:
            conn, _ = server.accept()
            hello = json.loads(conn.makefile().readline())
            peers[hello["rank"]] = hello["node"]
            conns.append(conn)
        for conn in conns:
            conn.sendall((json.dumps(peers) + "\n").encode())
            conn.close()
    else:
        while True:
            try:
                conn = socket.create_connection((addr, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    print(f"rank {rank}: cannot reach {addr}:{port}", flush=True)
                    return 1
                time.sleep(0.1)
        conn.sendall(
            (json.dumps({"rank": rank, "node": os.environ["PILOTHOUSE_NODE"]}) + "\n").encode()
        )
        peers = {int(k): v for k, v in json.loads(conn.makefile().readline()).items()}
    out = Path(os.environ["PILOTHOUSE_OUTPUT_DIR"]) / f"rank-{rank}.json"
    out.write_text(
        json.dumps(
            {
                "peers": {str(k): v for k, v in peers.items()},
                "env": {k: os.environ.get(k) for k in ENV},
            }
        )
    )
    print(f"rank {rank}/{world}: met {sorted(peers)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
