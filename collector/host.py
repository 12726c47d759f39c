"""Device values on their way to the host, read later by a thread that can afford to wait."""

from __future__ import annotations

import time

import torch


class ToHost:
    """Copies of tensors to the host, started now and read later with :meth:`lists`.

    On CUDA each copy is queued behind the work that computes it, into pinned memory, and an
    event marks where the copies end: the caller's thread goes on launching work while the
    device catches up, and only the thread that calls :meth:`lists` waits (the writer thread,
    not the training loop). A check that copied its table with ``.cpu()`` instead stopped the
    training thread until the device had drained everything queued before it. Elsewhere (the
    CPU, other accelerators) the copy is made at once.

    >>> ToHost([torch.tensor([1.0, 2.0]), torch.tensor(3)]).lists()
    [[1.0, 2.0], 3]
    """

    POLL_S = 0.0005
    """How often :meth:`lists` asks whether the copies are done. Polling, not
    ``Event.synchronize()``: the wait must never hold the GIL the training thread needs."""

    def __init__(self, tensors: list[torch.Tensor]):
        self._host: list[torch.Tensor] = []
        self._events: list[torch.cuda.Event] = []
        on_cuda: set[torch.device] = set()
        for tensor in tensors:
            if tensor.device.type == "cuda":
                # non_blocking into pinned memory: the copy is queued, not waited for
                self._host.append(tensor.to("cpu", non_blocking=True))
                on_cuda.add(tensor.device)
            else:  # a copy even on the CPU: the caller may change the tensor before it is read
                self._host.append(tensor.detach().to("cpu", copy=True))
        for device in on_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._events.append(event)

    def ready(self) -> bool:
        """Whether the copies have reached the host (always true off CUDA)."""
        return all(event.query() for event in self._events)

    def lists(self) -> list:
        """The tensors as Python lists (numbers for 0-dim ones); waits for the copies."""
        while not self.ready():
            time.sleep(self.POLL_S)
        return [t.tolist() for t in self._host]
