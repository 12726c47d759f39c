"""Tripwire for the Hugging Face ``transformers.Trainer``: a ``TrainerCallback``.

Step ``k`` is Trainer's ``global_step`` after its ``k``-th optimizer step. The input hooks are
armed in ``on_step_begin`` (so only the first micro-batch of an accumulation window is
sampled), the check runs in ``on_pre_optimizer_step`` -- once per optimizer step, on gradients
that Trainer has already unscaled and clipped to ``max_grad_norm`` -- and the loss, learning
rate and Trainer's own pre-clipping gradient norm come from ``on_log``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import collector
from collector.integrations import numeric, require

transformers = require("transformers", "transformers", "collector.integrations.huggingface")

log = logging.getLogger("tripwire.collector")

# Trainer's end-of-training summary (runtime, throughput, mean loss) is not a per-step series.
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
_SUMMARY_KEYS |= {"train_loss", "total_flos"}


class TripwireCallback(transformers.TrainerCallback):
    """Watches a ``Trainer`` run: the statistics of :func:`collector.watch`, per optimizer step.

    The run is named ``run`` or ``TrainingArguments.run_name`` or the output directory's name,
    and its config holds the ``TrainingArguments``, the model's config and ``config``. Other
    keyword arguments go to :func:`collector.watch` (``layers``, ``sample_size``, ``per_rank``,
    ...). With ``halt_on_alert=True`` a critical alert makes Trainer save a checkpoint and stop
    (``control.should_save`` and ``control.should_training_stop``), on every rank at the same
    step. ``log_on_checks`` asks Trainer to log on check steps, so that the loss, learning rate
    and ``grad_norm`` exist at every step with layer statistics. Given ``run_id=`` (the run's
    uid), ``trainer.train(resume_from_checkpoint=...)`` continues that run and replaces what it
    stored past the checkpoint (``resume_from`` of :func:`collector.watch`, set for you).

    >>> from transformers import Trainer
    >>> from collector.integrations.huggingface import TripwireCallback
    >>> trainer = Trainer(model, args, train_dataset=ds,                      # doctest: +SKIP
    ...                   callbacks=[TripwireCallback(db="sqlite:///tripwire.db", every=10)])
    >>> trainer.train()                                                       # doctest: +SKIP
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
        log_on_checks: bool = True,
        **watch_options,
    ):
        self.run, self.project, self.db, self.every = run, project, db, every
        self.config = dict(config or {})
        self.halt_on_alert = halt_on_alert
        self.log_on_checks = log_on_checks
        self.watch_options = watch_options
        self.monitor: collector.Monitor | None = None
        self.stopped_by: list | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.monitor is not None:
            self.monitor.close()  # a second train() call is a new run
        clipped = args.max_grad_norm is not None and args.max_grad_norm > 0
        config = {
            "training_args": args.to_sanitized_dict(),
            **({"model": _model_config(model)} if model is not None else {}),
            **self.config,
            "tripwire": {
                "integration": "transformers.Trainer",
                "gradients": "after unscaling and clipping" if clipped else "after unscaling",
                "grad_norm": "Trainer's, over all parameters, before clipping",
            },
        }
        options = dict(self.watch_options)
        if options.get("run_id") and state.global_step > 0:  # resume_from_checkpoint
            options.setdefault("resume_from", state.global_step + 1)
        self.monitor = collector.watch(
            model,
            run=self.run or args.run_name or Path(args.output_dir or "trainer").name,
            project=self.project,
            db=self.db,
            every=self.every,
            config=config,
            halt_on_alert=self.halt_on_alert,
            **options,
        )

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.prepare(state.global_step + 1)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            # Trainer logs its own global norm (before clipping) as grad_norm: keep that one.
            self.monitor.check(state.global_step + 1, grad_norm=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        if self.log_on_checks and self.monitor.is_check_step(state.global_step):
            control.should_log = True
        alerts = self.monitor.take_alarm()
        if alerts is not None:
            self.stopped_by = alerts
            control.should_save = True
            control.should_training_stop = True
            log.warning(
                "tripwire: %s; saving a checkpoint and stopping at step %d",
                collector.LossExplosionPredicted(alerts),
                state.global_step,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or not logs:
            return
        values = {k: v for k, v in numeric(logs).items() if k not in _SUMMARY_KEYS}
        if "learning_rate" in values:
            values["lr"] = values.pop("learning_rate")
        self.monitor.record(state.global_step, **values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        if self.stopped_by is not None:
            error = f"stopped by halt_on_alert: {collector.LossExplosionPredicted(self.stopped_by)}"
            self.monitor.close(status="failed", error=error)
        else:
            self.monitor.close()


def _model_config(model) -> dict:
    config = getattr(model, "config", None)
    described = config.to_dict() if hasattr(config, "to_dict") else {}
    return {"class": type(model).__name__, **described}
