"""Feedback computed while the next batch samples.

The research code submitted each batch's rewards to a thread pool and waited for them at once, so
the feedback models and the sampler never ran together. :class:`BackgroundScoring` queues batch
k's scoring on one worker thread and returns, so the caller samples batch k + 1 meanwhile. On
CUDA the worker issues its kernels on its own stream, ordered after the sampling work that
produced its inputs: the GPU interleaves feedback kernels with sampling kernels and the host
overheads of the two (Python, kernel launches) overlap. On a CPU both would compete for the same
cores, so the trainer enables it on CUDA only (``config.reward.overlap``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

ScoreFn = Callable[..., dict[str, torch.Tensor]]


class BackgroundScoring:
    """Scores batches in submission order; :meth:`results` waits for all of them.

    ``scorer(edits (B, G, 3, H, W), inputs (B, 3, H, W), styles (B, 3, H, W), *keys) -> {name: (B, G)}``
    (``keys``: the images' keys, passed through; see :class:`~editspecialists.rewards.registry.Scorer`).
    With ``enabled=False`` each batch is scored inline by :meth:`submit`, same results.
    """

    def __init__(self, scorer: ScoreFn, device: torch.device, enabled: bool):
        self.scorer, self.device = scorer, torch.device(device)
        self.enabled = enabled
        self.cuda = enabled and self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback") if enabled else None
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._pending: list[Future | dict] = []

    def submit(self, edits: torch.Tensor, inputs: torch.Tensor, styles: torch.Tensor, *keys) -> None:
        """Queue one batch (its tensors must not be modified in place until :meth:`results`)."""
        if not self.enabled:
            self._pending.append(self.scorer(edits, inputs, styles, *keys))
            return
        ready = None
        if self.cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
            for tensor in (edits, inputs, styles):
                if tensor.is_cuda:  # keep its memory from being reused before the worker is done
                    tensor.record_stream(self._stream)
        self._pending.append(self._pool.submit(self._score, ready, edits, inputs, styles, *keys))

    def _score(self, ready, edits, inputs, styles, *keys):
        if ready is None:
            return self.scorer(edits, inputs, styles, *keys), None
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            scores = self.scorer(edits, inputs, styles, *keys)
            done = torch.cuda.Event()
            done.record(self._stream)
        return scores, done

    def results(self) -> list[dict[str, torch.Tensor]]:
        """The scores of every submitted batch, in order, usable on the caller's stream; resets
        the queue. A scorer error is raised here."""
        pending, self._pending = self._pending, []
        if not self.enabled:
            return pending
        results = []
        for future in pending:
            scores, done = future.result()
            if done is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(done)
                for value in scores.values():
                    value.record_stream(stream)
            results.append(scores)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
