"""The looped engine: each device steps its own stage, one batch at a time.

A split step is the device's forward, the step on the tier above, then the device's backward. One
device at a time, a device host would sit idle while its edge computes, and the edge while the host
does. So the devices of one ``train_many`` call that step over data-plane links keep up to
``IN_FLIGHT`` steps on the wire at once (``train_interleaved``), each device's own steps still one
after another. Every device trains its own sessions on its own batches, so the floats are those
of training the devices one after another (tests/test_looped.py checks it bit for bit).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from tierflow.tiers.dataplane import DataPlaneClient
from tierflow.tiers.session import Session
from tierflow.tiers.step import wire_bytes
from tierflow.tiers.train_report import TrainReport
from tierflow.tiers.upper import PendingStep, UpperReply, submit_step

IN_FLIGHT = 4  # steps a host keeps on the wire: enough to keep its edges busy while it computes


class LoopedSteps:
    """One device's steps in a segment, and what they cost on each tier and link."""

    def __init__(self, session: Session, sampler, x: np.ndarray, y: np.ndarray, steps: int):
        self.session, self.sampler, self.x, self.y = session, sampler, x, y
        self.runner = session.runner
        self.n_tiers = session.key.n_tiers
        self.steps, self.left = int(steps), int(steps)
        self.compute = [0.0, 0.0, 0.0]
        self.up, self.down = [0, 0], [0, 0]
        self.loss_sum, self.correct, self.samples = 0.0, 0, 0
        self._batch = 0

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self.sampler.next_indices()
        return self.x[idx], self.y[idx]

    def local_step(self) -> None:
        """A device-only split: the whole step here."""
        x, y = self._draw()
        t0 = time.perf_counter()
        _, loss, correct = self.runner.forward_loss_backward([x], y, track_input_grad=False)
        self.compute[0] += time.perf_counter() - t0
        self._count(loss, correct, len(y))

    def forward(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The device's half of a step: the activations and labels to send up."""
        x, y = self._draw()
        t0 = time.perf_counter()
        acts = self.runner.forward([x], track_input_grad=False)
        self.compute[0] += time.perf_counter() - t0
        self.up[0] += wire_bytes(acts) + y.nbytes
        self._batch = len(y)
        return acts, y

    def backward(self, reply: UpperReply) -> None:
        """The rest of the step, from the tier above's answer."""
        self.down[0] += wire_bytes(reply.grads)
        t0 = time.perf_counter()
        self.runner.backward(reply.grads)
        self.compute[0] += time.perf_counter() - t0
        for k, c in enumerate(reply.compute_s):
            self.compute[1 + k] += c
        for k, b in enumerate(reply.bytes_up):
            self.up[1 + k] += b
        for k, b in enumerate(reply.bytes_down):
            self.down[1 + k] += b
        self._count(reply.loss, reply.correct, self._batch)

    def _count(self, loss: float, correct: int, samples: int) -> None:
        self.loss_sum += loss * samples
        self.correct += correct
        self.samples += samples
        self.session.steps_done += 1
        self.left -= 1

    def report(self, device_id: str, edge_name: str | None) -> TrainReport:
        finite = bool(np.isfinite(self.loss_sum)) and all(
            bool(torch.isfinite(p).all()) for p in self.runner.module.parameters())
        return TrainReport(device_id, edge_name, self.steps, self.samples, self.loss_sum, self.correct,
                           tuple(self.compute), tuple(self.up), tuple(self.down), self.n_tiers, finite)


def train_interleaved(runs: Sequence[LoopedSteps], links: Sequence[str], upper_ids: Sequence[str],
                      client: DataPlaneClient) -> list[Exception | None]:
    """Step every run to its end over its data-plane link, up to ``IN_FLIGHT`` steps in flight.

    Answers are taken in the order the steps were sent (an edge serves its requests in turn).
    Returns, per run, what stopped it early (None: it finished); a failure stops that run alone."""
    errors: list[Exception | None] = [None] * len(runs)
    waiting = deque(k for k, run in enumerate(runs) if run.left > 0)
    in_flight: deque[tuple[int, PendingStep]] = deque()

    def launch(k: int) -> None:
        try:
            acts, y = runs[k].forward()
            in_flight.append((k, submit_step(links[k], client, upper_ids[k], acts, y)))
        except Exception as exc:
            errors[k] = exc

    def fill() -> None:
        while waiting and len(in_flight) < IN_FLIGHT:
            launch(waiting.popleft())

    fill()
    while in_flight:
        k, pending = in_flight.popleft()
        try:
            runs[k].backward(pending.wait())
        except Exception as exc:
            errors[k] = exc
        if errors[k] is None and runs[k].left > 0:
            launch(k)
        fill()
    return errors
