"""The Monitor: what ``collector.watch`` returns and the training loop calls every step."""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from numbers import Number

import torch
from torch import nn

from collector.attention import AttentionLogitMax, attention_modules
from collector.capture import InputSampler, OutputLogZ
from collector.checks import PendingCheck, SpectralState, start_check
from collector.distributed import detect, unwrap
from collector.host import ToHost
from collector.layers import select_layers
from collector.scalars import as_scalar, describe, several
from collector.spectral import SA_BINS
from storage import Database, SchemaOutOfDate, StoreUnavailable
from storage.entities import listed
from storage.writer import BatchWriter

log = logging.getLogger("tripwire.collector")

COSTLY_SHARE = 0.05
"""A check that takes more than this share of the training time since the previous one, three
checks in a row, gets a warning (once) with a larger ``every`` to use."""

WARM_CHECKS = 2
"""Checks not judged for their cost: the first runs power iteration from cold (50 iterations)."""

_clock = time.perf_counter  # what the cost of a check is measured with (tests set their own)


class _Omitted:
    """The default of ``log()``'s ``loss`` and ``lr``: not given (an explicit None is warned of)."""

    def __repr__(self) -> str:
        return "<not given>"


_OMITTED = _Omitted()


class LossExplosionPredicted(RuntimeError):
    """Raised by ``Monitor.log`` (with ``halt_on_alert=True``) once a critical alert fires for the run.

    Catch it to checkpoint and stop, or to go back to a checkpoint from before ``alerts``'
    first steps and resume the run there (``watch(..., run_id=, resume_from=)``; the README's
    "Stop, go back, resume")::

        try:
            monitor.log(step, loss=loss)
        except collector.LossExplosionPredicted as alarm:
            save_checkpoint(); raise
    """

    def __init__(self, alerts: list):
        self.alerts = alerts
        names = ", ".join(
            sorted({f"{a.predictor}" + (f" on {a.layer}" if a.layer else "") for a in alerts})
        )
        names = names or "a critical alert seen by the rank that writes"
        super().__init__(f"Tripwire predicts a loss explosion: {names}")


class Monitor:
    """Observes one training run. Create it with :func:`collector.watch`.

    ``log()`` is cheap on ordinary steps (a few microseconds: the values are kept, not copied
    to the host); every ``every`` steps it runs a check of the monitored layers, and records
    what the check cost the training thread as the scalar ``tripwire_check_ms`` (on a GPU: the
    time to launch its work, which the device then runs beside training). A check that keeps
    taking more than 5 % of the training time gets a warning, once, with the ``every`` to use.
    Nothing in here raises into the training loop: an internal failure is logged once and
    counted in ``errors``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        run: str | None,
        project: str,
        db: str | None,
        every: int,
        config: dict | None,
        layers: list[str] | str | None,
        exclude: list[str] | str | None,
        sample_size: int,
        tags: list[str] | None,
        run_id: str | None,
        halt_on_alert: bool,
        spool_dir: str | None,
        seed: int,
        per_rank: bool = False,
        output_layer: str | None = "auto",
        attention_logits: bool = True,
        resume_from: int | None = None,
    ):
        if resume_from is not None and run_id is None:
            raise ValueError(f"resume_from={resume_from!r} needs run_id= (the run to resume)")
        if resume_from is not None:
            resume_from = _resume_step(resume_from)  # refused before the run is registered
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, got {sample_size}")
        for what, name in [("run", run), ("project", project), *(("tag", t) for t in tags or [])]:
            if name is not None and "\x00" in str(name):
                raise ValueError(f"the {what} name {name!r} holds a NUL character: not storable")
        for what, name, longest in [("run", run, 512), ("project", project, 255)]:
            if name is not None and len(name) > longest:
                raise ValueError(f"the {what} name is {len(name)} characters long, over {longest}")
        self.ranks = detect(per_rank)
        self.model = model = unwrap(model)
        _finish_earlier_monitors(model)
        self.every = every
        self.halt_on_alert = halt_on_alert
        self.uid = run_id or uuid.uuid4().hex
        self.name = run or f"run-{self.uid[:8]}"
        if per_rank and self.ranks.world > 1:
            self.uid, self.name = (
                f"{self.uid}-rank{self.ranks.rank}",
                f"{self.name}/rank{self.ranks.rank}",
            )
        if self.ranks.world > 1:
            config = dict(config or {})
            config["tripwire"] = {
                **config.get("tripwire", {}),
                "world_size": self.ranks.world,
                "ranks": "each rank writes its own run" if per_rank else "rank 0 writes for all",
            }
        self.project = project
        self.errors = 0  # counted by the training and the writer thread: only via _count_error()
        self._errors_lock = threading.Lock()
        self.checks = 0
        self.layers = select_layers(model, include=layers, exclude=exclude)
        if not self.layers:
            log.warning(
                "tripwire: no linear layers matched in %s; only scalars will be recorded",
                type(model).__name__,
            )
        if self.ranks.combines_inputs:  # the sample is split over the ranks' inputs
            sample_size = math.ceil(sample_size / self.ranks.world)
        self._sampler = InputSampler(self.layers, sample_size=sample_size, seed=seed, root=model)
        output = _output_module(model, output_layer)
        self._log_z = OutputLogZ(output, sample_size, seed) if output is not None else None
        attention = attention_modules(model) if attention_logits else []
        self._attention = AttentionLogitMax(attention) if attention else None
        self._probes = [p for p in (self._log_z, self._attention) if p is not None]
        self._spectral = SpectralState()
        self._pending: list[tuple[int, float, dict]] = []
        self._last_step: int | None = None
        self._closed = False
        self._error_logged = False
        self._fired: list | None = None  # set by the writer thread
        # A resumed run's critical alerts firing at its first poll (ids); a new run has none.
        self._firing_before: set[int] | None = None if run_id else set()
        self._alarm: list | None = None  # agreed by all ranks at a check (distributed only)
        self._alarm_lock = threading.Lock()
        self._warned: set[str] = set()
        self._last_check_end: float | None = None  # when the previous check ended
        self._flags: tuple[int, ToHost] | None = None  # a check's rank flags, not read yet
        self._costly_checks = 0  # consecutive checks above COSTLY_SHARE of training time

        self.db: Database | None = None
        self._writer: BatchWriter | _SilentWriter = _SilentWriter()
        if self.ranks.writes:
            self._open_store(db, spool_dir, project=project, config=config, tags=tags)
        if resume_from is not None:
            self.resume_from(resume_from)
        self._prepare(0)  # the first step may be a check step
        _live_monitors.add(self)

    # -- the training-loop API ------------------------------------------------------------------

    def log(self, step: int, loss=_OMITTED, lr=_OMITTED, **scalars) -> None:
        """Record step ``step``: call after ``loss.backward()`` and before ``optimizer.step()``.

        ``loss``, ``lr`` and any keyword scalars are each one number: a Python or numpy number,
        a one-element numpy array, or a one-element (or 0-dim) tensor, kept on its device until
        the next check and then copied in one batch. Anything else (a tensor of several
        elements, a string, None) is not stored: the first one for each key is warned of, and
        each is counted in ``errors``. On check steps the monitored layers' statistics are
        computed from the weights, their gradients and the inputs sampled during this step's
        forward pass.

        >>> monitor.log(step, loss=loss, lr=scheduler.get_last_lr()[0], tokens_per_s=tps)  # doctest: +SKIP
        """
        self._settle_flags()
        alerts = self.take_alarm()
        if alerts is not None:
            raise LossExplosionPredicted(alerts)
        if self._closed:
            return
        try:
            step = int(step)
            if lr is not _OMITTED:
                scalars = {"lr": lr, **scalars}
            if loss is not _OMITTED:
                scalars = {"loss": loss, **scalars}
            self._record(step, scalars)
            if self.is_check_step(step):
                self._check(step)
            self._prepare(step + 1)
        except Exception:
            self._failed()

    # -- for integrations: the same step in separate moments ---------------------------------------

    def is_check_step(self, step: int) -> bool:
        """Whether ``step`` gets per-layer statistics (every ``every`` steps, from step 0)."""
        return step % self.every == 0

    def prepare(self, step: int) -> None:
        """Say that the next forward pass is the first of step ``step`` (before it runs).

        Arms the input hooks when ``step`` is a check step, and drops what earlier passes left.
        ``log()`` does this itself for the step after the one it records; integrations whose
        framework announces each optimizer step (``on_step_begin``) call it there, so that
        gradient-accumulation micro-batches after the first and evaluation passes are not
        sampled.

        >>> monitor.prepare(trainer_step)     # then forward, backward, monitor.check(trainer_step)  # doctest: +SKIP
        """
        if self._closed:
            return
        self._settle_flags()
        try:
            self._prepare(int(step))
        except Exception:
            self._failed()

    def check(self, step: int, *, grad_norm: bool = True) -> bool:
        """Run step ``step``'s check now, if it is a check step; True if it ran.

        The gradients are measured as they are at this moment, so call it where they are final
        (after the last micro-batch's backward, before ``optimizer.step()``). The inputs are the
        ones sampled since :meth:`prepare`. In distributed training every rank must call it.
        ``grad_norm=False`` leaves the step's ``grad_norm`` to the caller (a framework that
        logs its own global norm); the per-layer gradient norms are stored either way.

        >>> monitor.check(trainer_step)  # doctest: +SKIP
        True
        """
        if self._closed or not self.is_check_step(int(step)):
            return False
        try:
            self._check(int(step), grad_norm=grad_norm)
            return True
        except Exception:
            self._failed()
            return False

    def record(self, step: int, **values) -> None:
        """Store per-step scalars (``loss``, ``lr``, anything numeric) without running a check.

        For integrations that see the loss at another moment than the gradients; values are
        numbers as in :meth:`log`, except that None means "no value at this step" and is
        passed over without a warning.

        >>> monitor.record(100, loss=2.31, lr=3e-4, epoch=0.4)  # doctest: +SKIP
        """
        if self._closed:
            return
        try:
            values = {k: v for k, v in values.items() if v is not None}
            self._record(int(step), values, caller="record")
        except Exception:
            self._failed()

    def resume_from(self, step: int) -> None:
        """Replace what this resumed run stored from ``step`` on: it went back to a checkpoint
        and goes on from ``step``. Call it before logging that step (``watch(resume_from=)``
        does; integrations whose framework restores the step later call it then).

        >>> monitor = collector.watch(model, run_id=uid)                # doctest: +SKIP
        >>> monitor.resume_from(trainer.global_step)                    # doctest: +SKIP
        """
        step = _resume_step(step)
        self._flush_scalars()  # values logged before go first, or they would land after it
        self._writer.put("rewind", {"from_step": step})

    def take_alarm(self) -> list | None:
        """The critical alerts that fired for this run since the last call, else None.

        Only with ``halt_on_alert``. In distributed training every rank gets the alarm at the
        same check (ranks that do not write get an empty list), so all of them stop together.
        Integrations poll this instead of catching :class:`LossExplosionPredicted`.

        >>> if monitor.take_alarm() is not None:  # doctest: +SKIP
        ...     control.should_training_stop = True
        """
        with self._alarm_lock:
            if self.ranks.reduces:
                alerts, self._alarm = self._alarm, None
            else:
                alerts, self._fired = self._fired, None
        return alerts

    def close(
        self, status: str = "finished", error: str | None = None, timeout: float = 30.0
    ) -> None:
        """Flush everything and mark the run ``finished`` (or ``failed``). Safe to call twice."""
        if self._closed:
            return
        self._settle_flags()
        self._closed = True
        _live_monitors.discard(self)
        try:
            self._sampler.disarm()
            for probe in self._probes:
                probe.disarm()
            self._flush_scalars()
            self._writer.put("finish", {"status": status, "at": time.time(), "error": error})
            self._writer.flush(timeout)
            self._writer.close(timeout)
            if self._writer.spooled:
                log.warning(
                    "tripwire: %s; %s keeps the rows, replayed when this run resumes "
                    "(collector.watch(..., run_id=%r)) or by `tripwire spool replay --dir %s "
                    "--db URL`",
                    "the database was unreachable"
                    if self._writer.unreachable
                    else "writing them failed (the error is logged above)",
                    self._writer.spool_path,
                    self.uid,
                    self._writer.spool_path.parent,
                )
        except Exception:
            self._failed()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, LossExplosionPredicted)):
            status = "finished" if exc_type is None else "failed"
        else:
            status = "failed"
        error = (
            None if exc is None else "".join(traceback.format_exception_only(exc_type, exc)).strip()
        )
        self.close(status=status, error=error)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything logged so far (useful before reading the database in the same process)."""
        self._flush_scalars()
        return self._writer.flush(timeout)

    @property
    def run_db_id(self) -> int | None:
        """The run's id in the database, once its first write went through."""
        return self._writer.run_id

    # -- internals --------------------------------------------------------------------------------

    def _open_store(
        self,
        db: str | None,
        spool_dir: str | None,
        *,
        project: str,
        config,
        tags,
    ) -> None:
        """Connect, start the writer thread and register the run (on the ranks that write)."""
        self.db = Database(db)
        schema_checked = True
        try:
            self.db.ensure_schema()  # refuses an out-of-date schema, with the command that fixes it
        except SchemaOutOfDate:
            raise
        except StoreUnavailable as exc:
            schema_checked = False  # the writer checks it once the database answers
            log.warning(
                "tripwire: database unavailable at start (%s); spooling until it returns", exc
            )
        self._writer = BatchWriter(
            self.db,
            self.uid,
            spool_dir=spool_dir,
            on_written=self._poll_alerts if self.halt_on_alert else None,
            on_error=self._writer_failed,
            schema_checked=schema_checked,
        )
        self._writer.put(
            "start",
            {
                "run": {
                    "uid": self.uid,
                    "project": project,
                    "name": self.name,
                    "started_at": time.time(),
                    "config": _jsonable(config or {}),
                    "tags": list(tags or []),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "every": self.every,
                    "sa_bin_edges": SA_BINS.tolist(),
                },
                "layers": [layer.spec() for layer in self.layers],
            },
        )

    def _record(self, step: int, values: dict, caller: str = "log") -> None:
        """Keep step ``step``'s values: each one number (:func:`collector.scalars.as_scalar`);
        any other is left out, warned of once per key and counted in ``errors``."""
        kept = {}
        for key, value in values.items():
            if "\x00" in key:  # PostgreSQL cannot store it, and it would hold up the run's rows
                self._count_error()
                self._warn_once(
                    f"nul:{key}",
                    "tripwire: %s(%r=...) at step %d: a name with a NUL character is not stored",
                    caller,
                    key,
                    step,
                )
                continue
            number = as_scalar(value)
            if number is not None:
                kept[key] = number
                continue
            self._count_error()
            hint = (
                f"log {key}.mean() for one number"
                if several(value)
                else "log a number or a one-element tensor"
            )
            self._warn_once(
                f"not-a-number:{key}",
                "tripwire: %s(%s=...) at step %d is %s, not a number; not stored (%s; "
                "later ones are counted in monitor.errors, not logged)",
                caller,
                key,
                step,
                describe(value),
                hint,
            )
        wall = time.time()
        self._pending.append((step, wall, kept))
        self._last_step = step
        self._writer.logged_at = wall  # progress is reported before the rows (sent at checks)

    def _prepare(self, step: int) -> None:
        self._sampler.discard()  # rows from a pass that was not a check step's first
        for probe in self._probes:
            probe.discard()
        if self.is_check_step(step):
            self._sampler.arm()
            for probe in self._probes:
                probe.arm()

    def _check(self, step: int, grad_norm: bool = True) -> None:
        started = _clock()
        rows = self._sampler.take()
        ranks = self.ranks if self.ranks.reduces else None
        check = start_check(self.layers, rows, self._spectral, ranks=ranks, step=step)
        output_log_z = self._log_z.take() if self._log_z is not None else None
        attn_logit_max = self._attention.take() if self._attention is not None else None
        if ranks is not None:
            self._exchange_flags(step, rows)
        if self.layers and not rows:
            self._warn_once(
                "no-rows",
                "tripwire: no input reached the monitored layers' forward hooks for step %d "
                "(a fused or scripted forward, or prepare() not called before it): the SA "
                "statistics of this check are missing",
                step,
            )
        wall = time.time()
        if self.layers:
            totals = {key: _Total(check, key) for key in ("grad_norm", "weight_norm")}
            if not grad_norm:
                del totals["grad_norm"]
            # A value the loop logs itself for this step wins over these.
            if output_log_z is not None:
                totals["log_z"] = output_log_z
            if attn_logit_max is not None:
                totals["attn_logit_max"] = attn_logit_max
            cost = _clock() - started
            totals["tripwire_check_ms"] = 1000 * cost
            self._note_cost(started, cost)
            if self._pending and self._pending[-1][0] == step:
                for key, value in totals.items():
                    self._pending[-1][2].setdefault(key, value)
            else:  # an integration's check, before the step's loss is known
                self._pending.append((step, wall, totals))
        # The scalars first: the writer may commit the two records apart, and the alert
        # service evaluates steps up to the newest layer rows (alerts.observations.horizon),
        # so rows of step S stored before the losses of the steps up to S would let it skip them.
        self._flush_scalars()
        if self.layers:
            # The rows are built on the writer thread, once the device has copied them back:
            # the training thread does not wait for the check it launched.
            self._writer.put("layer_stats", lambda: self._layer_rows(check, step, wall))
        self.checks += 1

    def _layer_rows(self, check: PendingCheck, step: int, wall: float) -> list[dict]:
        """A check's layer rows, read back on the writer thread; warns once of layers that got
        no input where others did (in distributed training: on no rank, once combined)."""
        layer_rows = check.result()[0]
        missing = [row["layer"] for row in layer_rows if row["sa_hist"] is None]
        if missing and len(missing) < len(layer_rows):
            self._warn_once(
                "layers-without-rows",
                "tripwire: %s got no input at step %d while other layers did: their SA "
                "statistics are missing from the check (norms and sigma1 are still recorded; "
                "warned once per run). A module whose weight is used without calling it "
                "(nn.MultiheadAttention's out_proj) never gets its input, and a layer that did "
                "not run on the step (an unused branch, an expert no token was routed to), or "
                "only inside compiled code after the step's first forward pass, gets none that "
                "step; collector.watch(..., exclude=[...]) leaves such layers out",
                listed(missing),
                step,
            )
        return _dated(layer_rows, step, wall)

    def _note_cost(self, started: float, cost: float) -> None:
        """Warn once when checks keep taking more than ``COSTLY_SHARE`` of the training time
        since the previous check, with the ``every`` that would bring them near 2 %."""
        previous, self._last_check_end = self._last_check_end, started + cost
        if previous is None or self.checks < WARM_CHECKS:  # cold: 50 iterations, first caches
            return
        between = started + cost - previous  # `every` steps, this check included
        share = cost / between if between > 0 else 0.0
        self._costly_checks = self._costly_checks + 1 if share > COSTLY_SHARE else 0
        if self._costly_checks == 3 and self.ranks.writes:
            step_s = max(between - cost, 1e-9) / self.every  # a step without its check
            every = math.ceil(cost * (1 / 0.02 - 1) / step_s)
            self._warn_once(
                "costly",
                "tripwire: each check took %.0f ms, %.0f %% of the training time between "
                "checks (every=%d); collector.watch(..., every=%d) would bring it near 2 %%",
                1000 * cost,
                100 * share,
                self.every,
                every,
            )

    def _exchange_flags(self, step: int, rows: dict[str, torch.Tensor]) -> None:
        """Start telling every rank which ranks went non-finite and whether a critical alert
        fired: the flags are built and gathered on the device, and read at the next
        ``log()`` or ``prepare()`` (:meth:`_settle_flags`), a call every rank makes at the same
        step, so all of them still stop together, and none waits for the device here."""
        self._settle_flags()  # two checks without a log() or prepare() between: read the first
        losses = [v["loss"] for _, _, v in self._pending if "loss" in v]
        device = self.layers[0].weight.device if self.layers else torch.device("cpu")
        flags = torch.stack(
            [
                _flag(self._fired is not None, device),
                _non_finite(losses, device),
                _non_finite(list(rows.values()), device),
            ]
        )
        self._flags = (step, ToHost([self.ranks.gather_flags(flags)]))

    def _settle_flags(self) -> None:
        """Act on the last check's flag table, if it has not been read yet."""
        if self._flags is None:
            return
        (step, copy), self._flags = self._flags, None
        try:
            self._read_flags(step, copy.lists()[0])
        except Exception:
            self._failed()

    def _read_flags(self, step: int, table: list[list[float]]) -> None:
        if any(alarm for alarm, _, _ in table):
            with self._alarm_lock:
                self._alarm, self._fired = self._fired or [], None
        bad = [r for r, (_, loss, act) in enumerate(table) if loss or act]
        if bad and self.ranks.writes:
            # Which rank blew up first is lost once gradients are all-reduced; name it here.
            self._record(step, {"nonfinite_rank": bad[0], "nonfinite_ranks": len(bad)})
            what = ", ".join(f"rank {r} ({'loss' if table[r][1] else 'activations'})" for r in bad)
            self._warn_once("nonfinite", "tripwire: non-finite values at step %d on %s", step, what)

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _flush_scalars(self) -> None:
        """Hand the pending per-step values to the writer, as rows it reads back itself (one
        host copy per device for all tensors among them)."""
        if not self.ranks.writes:
            self._pending.clear()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [
            v for _, _, values in pending for v in values.values() if isinstance(v, torch.Tensor)
        ]
        host = _HostScalars(tensors)

        def rows() -> list[dict]:
            values_back = iter(host.values())
            out = []
            for step, wall, values in pending:
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        value = next(values_back)
                    elif isinstance(value, _Total):
                        value = value.get()
                        if value is None:
                            continue
                    out.append({"step": step, "key": key, "value": value, "wall_time": wall})
            return out

        self._writer.put("scalars", rows)

    def _count_error(self) -> None:
        with self._errors_lock:  # `+=` reads, then writes: without the GIL two threads lose counts
            self.errors += 1

    def _poll_alerts(self, run_db_id: int) -> None:
        """Runs in the writer thread after each write: has a critical alert fired for this run?

        For a resumed run (``run_id=``, from a checkpoint) the critical alerts already firing at
        the first poll fired before this monitor started: they stopped the attempt it goes back
        on, and would halt it again at once. They do not count while they stay open; one that
        fires later does (the scheduler ends those that fired past the step this attempt went
        back to, so a blow-up of this attempt is a new alert).
        """
        from storage import alerts as alert_store  # the alert tables' queries

        firing = alert_store.firing_alerts(self.db, run_db_id, severity="critical")
        if self._firing_before is None:
            self._firing_before = {a.id for a in firing}
        firing = [a for a in firing if a.id not in self._firing_before]
        if firing:
            with self._alarm_lock:
                self._fired = firing

    def _writer_failed(self) -> None:
        """Runs in the writer thread after a failure it logged (once) itself."""
        self._count_error()

    def _failed(self) -> None:
        self._count_error()
        if not self._error_logged:
            self._error_logged = True
            log.exception(
                "tripwire: collector error (training continues; further errors counted in monitor.errors)"
            )


def _output_module(model: nn.Module, output_layer: str | None) -> nn.Module | None:
    """The layer whose output is the model's logits: by name, or ``"auto"``: the
    ``get_output_embeddings()`` of the model or, failing that, of the first submodule that has
    a linear one (a Hugging Face model inside a LightningModule or a wrapper); None for none."""
    if output_layer is None:
        return None
    if output_layer == "auto":
        for module in model.modules():  # the model itself first
            get = getattr(module, "get_output_embeddings", None)
            found = get() if callable(get) else None
            # A linear head only: an embedding returned here would be measured on its lookups.
            if isinstance(found, nn.Linear):
                return found
        return None
    try:
        return model.get_submodule(output_layer)
    except AttributeError:
        raise ValueError(
            f"output_layer {output_layer!r} is not a submodule of {type(model).__name__}"
        ) from None


def _resume_step(step) -> int:  # noqa: ANN001
    if int(step) < 0:
        raise ValueError(f"resume_from needs a step >= 0, got {step}")
    return int(step)


class _SilentWriter:
    """The writer of a rank that does not write (distributed training, rank 0 writes)."""

    run_id = None
    spooled = False
    spool_path = None
    logged_at = None

    def put(self, kind: str, payload) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass


def _flag(value: bool, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-dim float64 tensor on ``device``, filled in place: no host data to copy
    (``torch.tensor(...)`` on a GPU is a blocking copy)."""
    return torch.zeros((), dtype=torch.float64, device=device).fill_(float(value))


def _non_finite(values: list, device: torch.device) -> torch.Tensor:
    """Whether any of these numbers or tensors holds NaN or ±Inf, as a :func:`_flag`; the
    tensors are tested on the device, without reading them back."""
    numbers = [v for v in values if not isinstance(v, torch.Tensor) and isinstance(v, Number)]
    flag = _flag(any(not math.isfinite(v) for v in numbers), device)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors:
        bad = torch.stack([(~torch.isfinite(t.detach().float())).any().to(device) for t in tensors])
        flag = torch.maximum(flag, bad.any().double())
    return flag


class _HostScalars:
    """One-element tensors (losses, logged values) copied to the host in one batch per device."""

    def __init__(self, tensors: list[torch.Tensor]):
        self._by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            self._by_device.setdefault(t.device, []).append(i)
        self._count = len(tensors)
        self._copy = ToHost(
            [
                torch.stack([tensors[i].detach().float().reshape(()) for i in idx])
                for idx in self._by_device.values()
            ]
        )

    def values(self) -> list[float]:
        """Each tensor's value, in order; waits for the copies."""
        out: list[float] = [math.nan] * self._count
        for idx, values in zip(self._by_device.values(), self._copy.lists(), strict=True):
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out


class _Total:
    """A check's global norm (``grad_norm``, ``weight_norm``), known once its rows are back."""

    def __init__(self, check: PendingCheck, key: str):
        self.check, self.key = check, key

    def get(self) -> float | None:
        return self.check.result()[1].get(self.key)


def _dated(layer_rows: list[dict], step: int, wall: float) -> list[dict]:
    for row in layer_rows:
        row["step"] = step
        row["wall_time"] = wall
    return layer_rows


def _jsonable(value):
    """Configs often hold tensors, paths or dataclasses: keep what JSON can say, stringify the rest."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


_live_monitors: set[Monitor] = set()


def _finish_earlier_monitors(model: nn.Module) -> None:
    """Finish the runs still open on ``model`` in this process, as ``wandb.init`` finishes the
    previous run: a notebook cell run again (or a loop interrupted, then started over) would
    otherwise leave one ``running`` with its hooks armed, and the scheduler would report it as
    hung half an hour later (its writer keeps beating)."""
    for earlier in [m for m in _live_monitors if m.model is model]:
        log.warning(
            "tripwire: run %r was still open on this model; finished it at step %s "
            "(close a monitor, or use `with collector.watch(...)`, before watching again)",
            earlier.name,
            earlier._last_step,
        )
        earlier.close()


def _close_on_exit() -> None:
    """A script that forgets ``close()`` still flushes; an uncaught exception marks the run failed."""
    failed = getattr(sys, "last_value", None) is not None
    for monitor in list(_live_monitors):
        monitor.close(
            status="failed" if failed else "finished",
            error=repr(sys.last_value) if failed else None,
        )


atexit.register(_close_on_exit)
