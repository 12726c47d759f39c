"""What each rank runs in the distributed tests (started with torch.multiprocessing.spawn)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

try:
    from torch.distributed.fsdp import fully_shard  # FSDP2, torch >= 2.6
except ImportError:  # pragma: no cover - older torch
    fully_shard = None

import collector
from tests.integrations.helpers import TinyNet, exit_without_shutdown, fire_critical_alert, train


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _leave() -> None:
    """Leave the process group together, then end the process at once.

    gloo aborts a rank ("terminate called without an active exception") that tears the group
    down while its peer is still mid-collective, hence the barrier; and now and then at
    interpreter shutdown, hence :func:`exit_without_shutdown` (the rank has written everything
    it reports).
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    exit_without_shutdown()


def runs(rank: int, world: int, port: int, url: str, out: str) -> None:
    """The single-process reference, then runs under DDP (plain, a NaN on rank 1, per-rank
    writing, halt_on_alert) and FSDP2: all in the same processes, so with the same code."""
    spool = Path(out) / f"spool{rank}"
    kw = {"db": url, "every": 2, "sample_size": 4096, "spool_dir": spool}
    if rank == 0:  # before the process group exists: one process, the whole global batch
        torch.manual_seed(0)
        model = TinyNet()
        with collector.watch(model, run="single", **kw) as monitor:
            train(model, monitor, 5)
    _init(rank, world, port)

    torch.manual_seed(0)
    model = DistributedDataParallel(TinyNet())
    with collector.watch(model, run="ddp", **kw) as monitor:
        train(model, monitor, 5, rank=rank, world=world)

    torch.manual_seed(0)
    model = DistributedDataParallel(TinyNet())
    with collector.watch(model, run="ddp-nan", **kw) as monitor:
        train(model, monitor, 3, rank=rank, world=world, nan_at=2, nan_rank=1)

    torch.manual_seed(0)
    model = DistributedDataParallel(TinyNet())
    with collector.watch(model, run="ddp-per-rank", per_rank=True, **kw) as monitor:
        train(model, monitor, 3, rank=rank, world=world)

    torch.manual_seed(0)
    model = DistributedDataParallel(TinyNet())
    monitor = collector.watch(model, run="ddp-halt", halt_on_alert=True, **kw)
    stopped = None
    try:
        for step in range(12):
            x = torch.randn(4, 4, 12)
            model(x).sum().backward()
            monitor.log(step, loss=1.0)
            if rank == 0:
                monitor.flush()  # makes the writer's alert poll happen now, not within a second
                if step == 0:
                    fire_critical_alert(url, monitor.run_db_id)
            model.zero_grad()
    except collector.LossExplosionPredicted:
        stopped = step
    monitor.close()
    Path(out, f"halt{rank}.json").write_text(json.dumps({"stopped": stopped}))

    if fully_shard is not None:
        torch.manual_seed(0)
        model = TinyNet()
        for layer in (model.fc1, model.fc2, model.head):
            fully_shard(layer)  # the head's 3 rows split 2 + 1: uneven shards
        fully_shard(model)
        with collector.watch(model, run="fsdp", **kw) as monitor:
            train(model, monitor, 5, rank=rank, world=world)
    _leave()


def trainer(rank: int, world: int, port: int, url: str, out: str) -> None:
    """transformers.Trainer under DDP (gloo), launched the way torchrun sets the environment."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from collector.integrations.huggingface import TripwireCallback
    from tests.integrations.test_huggingface import _train  # imports transformers

    callback = TripwireCallback(db=url, every=2, spool_dir=Path(out) / f"spool{rank}")
    _train(Path(out), [callback], ddp_backend="gloo", run_name="hf-ddp")
    Path(out, f"trainer{rank}.json").write_text(json.dumps({"errors": callback.monitor.errors}))
    _leave()  # Trainer set the group up and leaves it to the process exit
