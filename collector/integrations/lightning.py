"""Tripwire for Lightning: a ``Callback`` for ``lightning.Trainer`` (or ``pytorch_lightning``).

Step ``k`` is Lightning's ``global_step`` while its ``k``-th optimizer step (0-based) is being
taken, as in a plain loop. The input hooks are armed by the first batch of each step (the first
micro-batch under ``accumulate_grad_batches``) and the check runs in
``on_before_optimizer_step``: once per optimizer step, on gradients that AMP has already
unscaled but that ``gradient_clip_val`` has not clipped yet. The loss recorded for a step is the
sum of its micro-batches' ``training_step`` losses as Lightning returns them (each divided by
``accumulate_grad_batches``, so the sum is their mean).
"""

from __future__ import annotations

import importlib.util
import logging

import collector
from collector.integrations import require

# One of the two package names Lightning ships under; the Trainer and this Callback must agree.
_PACKAGE = "lightning.pytorch" if importlib.util.find_spec("lightning") else "pytorch_lightning"
pl = require(_PACKAGE, "lightning", "collector.integrations.lightning")

log = logging.getLogger("tripwire.collector")


class TripwireCallback(pl.Callback):
    """Watches a Lightning ``fit``: the statistics of :func:`collector.watch`, per optimizer step.

    The run is named ``run`` or after the logger's name and version (else the module's class),
    and its config holds the module's ``hparams``, the Trainer's settings and ``config``. Other
    keyword arguments go to :func:`collector.watch`. With ``halt_on_alert=True`` a critical
    alert sets ``trainer.should_stop`` on every rank at the same step. Given ``run_id=`` (the
    run's uid), ``trainer.fit(..., ckpt_path=...)`` continues that run and replaces what it
    stored past the checkpoint (:meth:`collector.Monitor.resume_from`, called for you).

    >>> import lightning as L
    >>> from collector.integrations.lightning import TripwireCallback
    >>> trainer = L.Trainer(max_steps=1000, callbacks=[TripwireCallback(every=10)])  # doctest: +SKIP
    >>> trainer.fit(module, loader)                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        run: str | None = None,
        project: str = "default",
        db: str | None = None,
        every: int = 10,
        config: dict | None = None,
        *,
        halt_on_alert: bool = False,
        **watch_options,
    ):
        self.run, self.project, self.db, self.every = run, project, db, every
        self.config = dict(config or {})
        self.halt_on_alert = halt_on_alert
        self.watch_options = watch_options
        self.monitor: collector.Monitor | None = None
        self.stopped_by: list | None = None
        self._step: int | None = None  # the optimizer step the current batches belong to
        self._loss = None

    def on_fit_start(self, trainer, pl_module):
        config = {
            "hparams": dict(getattr(pl_module, "hparams", {}) or {}),
            "trainer": _trainer_settings(trainer),
            **self.config,
            "tripwire": {
                "integration": "lightning.Trainer",
                "gradients": "after unscaling, before clipping",
            },
        }
        self.monitor = collector.watch(
            pl_module,
            run=self.run or _run_name(trainer, pl_module),
            project=self.project,
            db=self.db,
            every=self.every,
            config=config,
            halt_on_alert=self.halt_on_alert,
            **self.watch_options,
        )
        self._step, self._loss, self._micro_batches = None, None, 0

    def on_train_start(self, trainer, pl_module):
        # fit(ckpt_path=...) restores global_step after on_fit_start, before this.
        resumed = self.watch_options.get("run_id") and "resume_from" not in self.watch_options
        if self.monitor is not None and resumed and trainer.global_step > 0:
            self.monitor.resume_from(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.monitor is not None and trainer.global_step != self._step:
            self._step, self._loss, self._micro_batches = trainer.global_step, None, 0
            self.monitor.prepare(self._step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.monitor is None:
            return
        self.monitor.check(trainer.global_step)
        self.monitor.record(trainer.global_step, lr=optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
            self._micro_batches += 1
        if trainer.global_step != self._step:  # this batch completed an optimizer step
            # Lightning divides each micro-batch's loss by accumulate_grad_batches, also in an
            # epoch's last, shorter window: the mean of that one needs its own count.
            if self._loss is not None and self._micro_batches:
                self._loss = self._loss * (trainer.accumulate_grad_batches / self._micro_batches)
            self.monitor.record(self._step, loss=self._loss)
            self._loss = None
        alerts = self.monitor.take_alarm()
        if alerts is not None:
            self.stopped_by = alerts
            trainer.should_stop = True
            log.warning(
                "tripwire: %s; stopping at step %d",
                collector.LossExplosionPredicted(alerts),
                trainer.global_step,
            )

    def on_fit_end(self, trainer, pl_module):
        self._close()

    def on_exception(self, trainer, pl_module, exception):
        self._close(status="failed", error=f"{type(exception).__name__}: {exception}")

    def _close(self, status: str = "finished", error: str | None = None) -> None:
        if self.monitor is None:
            return
        if self.stopped_by is not None and error is None:
            status = "failed"
            error = f"stopped by halt_on_alert: {collector.LossExplosionPredicted(self.stopped_by)}"
        self.monitor.close(status=status, error=error)


def _run_name(trainer, pl_module) -> str:
    logger = trainer.logger
    if logger is not None and getattr(logger, "name", None):
        version = getattr(logger, "version", None)
        return f"{logger.name}/{version}" if version not in (None, "") else str(logger.name)
    return type(pl_module).__name__


def _trainer_settings(trainer) -> dict:
    return {
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "precision": str(trainer.precision),
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
    }
