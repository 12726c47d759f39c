"""Tripwire for Hugging Face Accelerate: a ``GeneralTracker`` that also starts the layer watch.

``Accelerator(log_with=[tracker])`` sends ``accelerator.log(...)`` scalars (main process only,
as Accelerate does for every tracker); ``tracker.watch(accelerator.unwrap_model(model))``
returns the :class:`collector.Monitor` whose ``log()`` the loop calls on every rank, once per
optimizer step, for the layer statistics. Both write the same run.
"""

from __future__ import annotations

import logging

from torch import nn

import collector
from collector.integrations import numeric, require

accelerate_tracking = require(
    "accelerate.tracking", "accelerate", "collector.integrations.accelerate"
)

log = logging.getLogger("tripwire.collector")


class TripwireTracker(accelerate_tracking.GeneralTracker):
    """An Accelerate tracker writing to Tripwire, and the factory of the run's Monitor.

    Call ``accelerator.init_trackers(...)`` before :meth:`watch` so that its ``config`` is part
    of the run. In the loop, call ``monitor.log(step, ...)`` when ``accelerator.sync_gradients``
    (after the last micro-batch's backward, before ``optimizer.step()``); with fp16 call
    ``accelerator.clip_grad_norm_`` or ``accelerator.unscale_gradients()`` first, so that the
    gradients are unscaled.

    >>> tracker = TripwireTracker(run="acc-demo", db="sqlite:///tripwire.db", every=10)
    >>> accelerator = Accelerator(log_with=[tracker], gradient_accumulation_steps=4)  # doctest: +SKIP
    >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)         # doctest: +SKIP
    >>> accelerator.init_trackers("my-project", config={"lr": 3e-4})                    # doctest: +SKIP
    >>> monitor = tracker.watch(accelerator.unwrap_model(model))                         # doctest: +SKIP
    """

    name = "tripwire"
    requires_logging_directory = False

    def __init__(
        self,
        run: str | None = None,
        project: str = "default",
        db: str | None = None,
        every: int = 10,
        config: dict | None = None,
        **watch_options,
    ):
        super().__init__()
        self.run, self.project, self.db, self.every = run, project, db, every
        self.config = dict(config or {})
        self.watch_options = watch_options
        self.monitor: collector.Monitor | None = None
        self._step = -1

    @property
    def tracker(self) -> collector.Monitor | None:
        """The Monitor (what ``accelerator.get_tracker("tripwire", unwrap=True)`` returns)."""
        return self.monitor

    def watch(self, model: nn.Module) -> collector.Monitor:
        """Start the run on ``model`` (unwrapped) and return its Monitor; call on every rank."""
        if self.monitor is not None:
            return self.monitor
        config = {
            **self.config,
            "tripwire": {
                "integration": "accelerate",
                "gradients": "as they are when monitor.log() is called",
            },
        }
        self.monitor = collector.watch(
            model,
            run=self.run,
            project=self.project,
            db=self.db,
            every=self.every,
            config=config,
            **self.watch_options,
        )
        return self.monitor

    def store_init_configuration(self, values: dict):
        if self.monitor is not None:
            log.warning(
                "tripwire: init_trackers() came after tracker.watch(); its config is not stored"
            )
        self.config.update(values)

    def log(self, values: dict, step: int | None = None, **kwargs):
        if self.monitor is None:
            self.watch(nn.Module())  # scalars only: watch() was not called
        self._step = self._step + 1 if step is None else int(step)
        self.monitor.record(self._step, **numeric(values))

    def finish(self):
        if self.monitor is not None:
            self.monitor.close()
