"""A rank of the multi-node tests: joins the process group torchrun set up
(gloo), all-reduces rank + 1 and writes what it saw to OUT_DIR/rank<N>.json.
With FAIL_RANK=<N> that rank exits 3 and the others write their pid to
OUT_DIR/hung<rank>.pid and sleep (a rank stuck in a long step), so only a
launcher that kills them on the failure ends the job."""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if os.environ.get("FAIL_RANK") == str(rank):
    print(f"rank {rank}: failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
if os.environ.get("FAIL_RANK"):
    (out / f"hung{rank}.pid").write_text(str(os.getpid()))
    time.sleep(600)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
record = {
    "rank": rank,
    "world_size": world,
    "sum": t.item(),
    "node": os.environ.get("SLURM_NODEID"),
    "local_rank": os.environ.get("LOCAL_RANK"),
    "group_rank": os.environ.get("GROUP_RANK"),
}
(out / f"rank{rank}.json").write_text(json.dumps(record))
dist.destroy_process_group()
