"""Distributed training: which rank this is, which rank writes, and the cross-rank reductions.

Under DDP every rank holds the same weights and (after the all-reduce) the same gradients, but
each sees its own inputs; under FSDP each rank holds a shard of the weights and gradients. A
check must give the statistics of the whole model and the whole global batch, so:

- norms of sharded parameters sum the local squares over the ranks (one all-reduce per check);
- σ1 and v1 come from the full matrix, gathered at check steps only, a power group (layers of
  one shape, at most 128 MiB whole, or one bigger layer) at a time;
- SA statistics combine every rank's input sample from per-rank counts and sums (one all-reduce
  of a small table, plus one for the maxima), never by moving rows;
- a small flag table names the ranks whose loss or activations went non-finite, and carries
  rank 0's "a critical alert fired" to every rank so that all of them stop at the same step.

Every rank must run every check (the collectives are matched by order). Only torch here (and
the column names of :mod:`collector.spectral`).

>>> ranks = detect()                  # no process group: a single process that writes
>>> (ranks.rank, ranks.world, ranks.writes, ranks.reduces)
(0, 1, True, False)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from collector.spectral import SA_COLUMNS

try:  # DTensor (FSDP2's sharded parameters); absent on old or non-distributed builds
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = Replicate = None

# Columns of the per-layer SA table that is summed over ranks (the histogram follows them).
_N_SA, _POS, _MEAN, _ABS, _N_ROWS, _NORM, _NAN_ACT, _C_ABS, _C_IMB, _N_C = range(10)
_SA_SUMS = 10
_SA_COL = {name: i for i, name in enumerate(SA_COLUMNS)}


def _dist():
    import torch.distributed as dist

    return dist


def _process_group_ready() -> bool:
    if not torch.distributed.is_available():
        return False
    return _dist().is_initialized()


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job and what it does at a check.

    ``rank``/``world`` come from the initialized process group, else from the ``RANK`` and
    ``WORLD_SIZE`` variables (torchrun, accelerate launch) and else are 0/1. ``reduces`` is true
    when a process group of more than one rank is up, so collectives can run. ``per_rank``: every
    rank writes its own run with its own inputs' statistics, instead of rank 0 writing the
    combined ones.
    """

    rank: int = 0
    world: int = 1
    reduces: bool = False
    per_rank: bool = False

    @property
    def writes(self) -> bool:
        """Whether this rank writes to the database."""
        return self.per_rank or self.rank == 0

    @property
    def combines_inputs(self) -> bool:
        """Whether SA statistics combine the inputs of all ranks (rank-0 writing under DDP/FSDP)."""
        return self.reduces and not self.per_rank

    # -- parameters ---------------------------------------------------------------------------

    def sharded(self, params: list[torch.Tensor]) -> bool:
        """Whether any parameter is a DTensor (FSDP2, tensor parallel)."""
        return self.reduces and DTensor is not None and any(isinstance(p, DTensor) for p in params)

    @torch.no_grad()
    def sharded_norms(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frobenius norms of the full parameters and gradients, from the local shards.

        Each rank sums its local squares, divided by how many ranks hold a replica of that
        shard, and one all-reduce adds them up. NaN where a parameter has no gradient.
        """
        device = _local(params[0]).device
        squares = torch.zeros(2, len(params), dtype=torch.float64, device=device)
        missing_grad = []
        for i, p in enumerate(params):
            share = 1.0 / _replicas(p, self.world)
            squares[0, i] = _local(p).detach().double().square().sum() * share
            if p.grad is None:
                missing_grad.append(i)
            else:
                squares[1, i] = _local(p.grad).detach().double().square().sum() * share
        squares = self._all_reduce(squares, "sum")
        norms = squares.sqrt().float()
        norms[1, missing_grad] = math.nan
        return norms[0], norms[1]

    # -- SA statistics ------------------------------------------------------------------------

    @torch.no_grad()
    def combine_sa_table(
        self, sa: torch.Tensor, hists: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SA statistics of all ranks' input samples, from each rank's statistics of its own,
        for a whole check's table at once, without a host copy.

        ``sa`` is ``(L, 8)`` in the order of ``SA_COLUMNS``, ``hists`` ``(L, bins)`` and
        ``counts`` ``(L, 2)`` (rows with an SA, rows sampled; zero where this rank has no
        sample), as :func:`collector.batched.layer_table` returns them. Means are weighted by
        each rank's row counts; NaN on any rank makes the result NaN, as it would in one
        process. Returns the combined ``sa`` (NaN for layers no rank sampled) and ``hists`` and
        whether any rank sampled each layer, ``(L,)`` bool, still on the device. Two
        all-reduces.
        """
        device, n_bins = sa.device, hists.shape[1]
        sa = sa.double()
        n_sa, n_rows = counts.double().unbind(dim=1)
        sampled, has_sa = n_rows > 0, n_sa > 0
        sums = torch.zeros(sa.shape[0], _SA_SUMS + n_bins, dtype=torch.float64, device=device)
        sums[:, _N_SA] = n_sa
        weighted = torch.where(has_sa[:, None], sa * n_sa[:, None], 0.0)
        for col, name in ((_POS, "sa_pos"), (_MEAN, "sa_mean"), (_ABS, "sa_abs_mean")):
            sums[:, col] = weighted[:, _SA_COL[name]]
        # Each rank centres its own batch; the centred statistics are averaged over ranks by
        # row count (a per-batch quantity: the union of the batches has no single centre). A
        # rank whose rows have an SA but no centred one (one row, rows all equal) leaves them to
        # the others; a NaN input still makes them NaN.
        centred = has_sa & ~(
            sa[:, _SA_COL["sa_c_imbalance"]].isnan() & ~sa[:, _SA_COL["sa_pos"]].isnan()
        )
        sums[:, _N_C] = torch.where(centred, n_sa, 0.0)
        for col, name in ((_C_ABS, "sa_c_abs_mean"), (_C_IMB, "sa_c_imbalance")):
            sums[:, col] = torch.where(centred, weighted[:, _SA_COL[name]], 0.0)
        sums[:, _N_ROWS] = n_rows
        sums[:, _NORM] = torch.where(sampled, sa[:, _SA_COL["act_norm_mean"]] * n_rows, 0.0)
        act_max = sa[:, _SA_COL["act_max"]]
        sums[:, _NAN_ACT] = (sampled & act_max.isnan()).double()
        sums[:, _SA_SUMS:] = hists.double()
        # gloo's MAX is not NaN-aware: send +Inf and restore NaN from the flag column.
        maxima = torch.where(sampled, torch.where(act_max.isnan(), math.inf, act_max), 0.0)
        sums = self._all_reduce(sums, "sum")
        maxima = self._all_reduce(maxima, "max")

        # column by column: indexing with a list would copy it to the device, a sync point
        sa_pos, sa_mean, sa_abs_mean = (
            sums[:, col] / sums[:, _N_SA] for col in (_POS, _MEAN, _ABS)
        )
        c_abs, c_imbalance = (sums[:, col] / sums[:, _N_C] for col in (_C_ABS, _C_IMB))
        act_max = torch.where(sums[:, _NAN_ACT] > 0, math.nan, maxima)
        combined = {
            "sa_pos": sa_pos,
            "sa_imbalance": (2 * sa_pos - 1).abs(),
            "sa_mean": sa_mean,
            "sa_abs_mean": sa_abs_mean,
            "act_max": act_max,
            "act_norm_mean": sums[:, _NORM] / sums[:, _N_ROWS],
            "sa_c_abs_mean": c_abs,
            "sa_c_imbalance": c_imbalance,
        }
        table = torch.stack([combined[name] for name in SA_COLUMNS], dim=1).float()
        present = sums[:, _N_ROWS] > 0
        table = torch.where(present[:, None], table, math.nan)
        return table, sums[:, _SA_SUMS:].round().long(), present

    # -- flags --------------------------------------------------------------------------------

    @torch.no_grad()
    def gather_flags(self, flags: torch.Tensor) -> torch.Tensor:
        """Every rank's ``flags`` (a 1-D tensor of the same length everywhere), as ``world × n``."""
        table = torch.zeros(self.world, flags.numel(), dtype=torch.float64, device=flags.device)
        table[self.rank] = flags.double()
        return self._all_reduce(table, "sum") if self.reduces else table

    # -- plumbing -----------------------------------------------------------------------------

    def _all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if not self.reduces:
            return tensor
        dist = _dist()
        backend = str(dist.get_backend())
        on_device = tensor.is_cuda and "nccl" in backend
        work = tensor if on_device else tensor.cpu()
        dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return work.to(tensor.device)


def detect(per_rank: bool = False) -> Ranks:
    """This process's :class:`Ranks`: from the process group if it is up, else the environment.

    >>> detect().writes
    True
    """
    if _process_group_ready():
        dist = _dist()
        world = dist.get_world_size()
        return Ranks(dist.get_rank(), world, reduces=world > 1, per_rank=per_rank)
    rank = int(os.environ.get("RANK", "0") or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return Ranks(rank, world, reduces=False, per_rank=per_rank)


def full(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded DTensor is gathered (a collective), anything else returned as is."""
    if DTensor is not None and isinstance(param, DTensor):
        return param.full_tensor()
    return param


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers.

    Layer names then read the same (``fc1``, not ``module.fc1`` or ``_orig_mod.fc1``) whether
    or not the model was wrapped. FSDP2 (``fully_shard``) does not wrap and needs nothing.

    >>> unwrap(nn.parallel.DataParallel(nn.Linear(2, 2))).__class__.__name__
    'Linear'
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def _local(t: torch.Tensor) -> torch.Tensor:
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def _replicas(t: torch.Tensor, world: int) -> int:
    """How many ranks hold each element of ``t`` (all of them for a plain tensor)."""
    if DTensor is None or not isinstance(t, DTensor):
        return world
    mesh = t.device_mesh
    return math.prod(
        mesh.size(dim) for dim, p in enumerate(t.placements) if isinstance(p, Replicate)
    )
