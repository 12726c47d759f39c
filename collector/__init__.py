"""Tripwire's in-trainer collector.

>>> import collector
>>> monitor = collector.watch(model, run="gpt-small-lr3e-3", every=10)  # doctest: +SKIP
>>> for step, (x, y) in enumerate(loader):
...     loss = model(x, y)
...     loss.backward()
...     monitor.log(step, loss=loss, lr=scheduler.get_last_lr()[0])
...     optimizer.step(); optimizer.zero_grad()
>>> monitor.close()
"""

from __future__ import annotations

from torch import nn

from collector.logits import attention_logit_max, log_z
from collector.monitor import LossExplosionPredicted, Monitor

__all__ = ["LossExplosionPredicted", "Monitor", "attention_logit_max", "log_z", "watch"]


def watch(
    model: nn.Module,
    run: str | None = None,
    project: str = "default",
    db: str | None = None,
    every: int = 10,
    config: dict | None = None,
    *,
    layers: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    sample_size: int = 1024,
    tags: list[str] | None = None,
    run_id: str | None = None,
    resume_from: int | None = None,
    halt_on_alert: bool = False,
    spool_dir: str | None = None,
    seed: int = 0,
    per_rank: bool = False,
    output_layer: str | None = "auto",
    attention_logits: bool = True,
) -> Monitor:
    """Start monitoring ``model``; returns the :class:`Monitor` whose ``log()`` the loop calls.

    Args:
        model: the module being trained (unwrap DDP/compile wrappers or pass them; both work).
        run: a human name for the run (names may repeat; the newest wins on look-up).
        project: groups runs on the dashboard.
        db: database URL; default ``$TRIPWIRE_DB_URL``, else ``sqlite:///tripwire.db``.
        every: run a check (per-layer statistics) every this many steps.
        config: hyper-parameters to store with the run (shown on the dashboard).
        layers: glob patterns of layer names to monitor (default: every ``nn.Linear`` and
            ``transformers``' ``Conv1D``).
        exclude: glob patterns of layer names to leave out.
        sample_size: input rows (tokens) sampled per layer per check for spectral alignment.
        tags: free-form labels.
        run_id: resume the run with this id (``monitor.uid``) instead of starting a new one.
        resume_from: with ``run_id``, the step this attempt starts at, when it went back to a
            checkpoint: what the run stored from this step on (the earlier attempt's steps past
            the checkpoint) is replaced by this attempt's, and the scheduler ends the alerts
            that fired on those steps. Without it, steps already stored keep their values.
        halt_on_alert: raise :class:`LossExplosionPredicted` from ``log()`` once a critical
            alert fires for this run (needs the alert scheduler running against the same DB).
        spool_dir: where rows wait while the database is unreachable
            (default ``$TRIPWIRE_SPOOL_DIR`` or ``~/.cache/tripwire/spool``).
        seed: seed of the input-row sampler.
        per_rank: in distributed training, every rank writes its own run (``<run>/rank<r>``)
            with the statistics of its own inputs, instead of rank 0 writing those of all ranks.
            Either way every rank must call ``log()`` (checks use collectives).
        output_layer: the layer whose output is the model's logits (e.g. ``"lm_head"``); on
            check steps its ``log Z`` (mean ``logsumexp`` over up to ``sample_size`` positions)
            is stored as the ``log_z`` scalar the ``log_z_drift`` predictor judges, unless the
            loop logs its own. ``"auto"`` (default): the ``get_output_embeddings()`` of a
            Hugging Face model, ``model`` or the first inside it, if it is an ``nn.Linear``;
            else none. ``None``: never.
        attention_logits: on check steps, store the largest attention logit of the model's
            Hugging Face attention modules (Llama, Mistral, Qwen2, Phi-3 and models built like
            them: rotary embeddings, no qk-norm; GPT-2; :mod:`collector.attention`) as the
            ``attn_logit_max`` scalar the ``attention_logits`` predictor judges, unless the
            loop logs its own. Other models: log it yourself (:func:`attention_logit_max`).
            ``False``: never.

    Raises only at start-up: ``ValueError`` for bad arguments, ``storage.SchemaOutOfDate`` for a
    database whose schema needs ``tripwire db upgrade``. A database that is down at start is not
    an error: rows are spooled and replayed when it returns.

    >>> with collector.watch(model, run="baseline", config={"lr": 3e-3}) as monitor:  # doctest: +SKIP
    ...     train(model, monitor)
    """
    return Monitor(
        model,
        run=run,
        project=project,
        db=db,
        every=every,
        config=config,
        layers=layers,
        exclude=exclude,
        sample_size=sample_size,
        tags=tags,
        run_id=run_id,
        resume_from=resume_from,
        halt_on_alert=halt_on_alert,
        spool_dir=spool_dir,
        seed=seed,
        per_rank=per_rank,
        output_layer=output_layer,
        attention_logits=attention_logits,
    )
