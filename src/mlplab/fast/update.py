"""The optimisers' updates of :mod:`mlplab.optim` without temporaries: each parameter gets
scratch arrays kept between steps; SGD's final p ← p − a·d is one BLAS axpy, and Adam/AdamW run
block by block (each block in L2 cache), the blocks shared out between threads.

The formulas, state and step counter are the optimiser's own (``optimizer.state``,
``optimizer.step_count``), so a run can switch between this and ``optimizer.step()`` at any
step, and a checkpoint does not say which was used. Why it pays: NumPy's ``p -= lr * d`` makes a
temporary and two passes on one core, and every large temporary is page-faulted in anew on each
step (figures in the :mod:`mlplab.fast` docstring).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlplab.fast._blas import Axpy
from mlplab.optim import SGD, Adam, Optimizer

#: elements per block of the blocked Adam update: its six arrays' blocks (p, g, m, v and two
#: scratch) take 1.5 MB in float32, so the thirteen passes over a block run in a core's L2 cache
BLOCK = 1 << 16


def update_threads() -> int:
    """Threads for the optimiser update: ``MLPLAB_UPDATE_THREADS`` if set, else the cores this
    process may run on (at most 4)."""
    value = os.environ.get("MLPLAB_UPDATE_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class Updater:
    """``update(optimizer)``: one ``optimizer.step()``, computed in place. SGD (plain, momentum,
    Nesterov, weight decay, dampening), Adam and AdamW; any other optimiser steps itself."""

    def __init__(self, threads: int | None = None) -> None:
        self._plans: dict[int, Axpy] = {}
        self._scratch_arrays: dict[tuple[int, int], np.ndarray] = {}
        #: threads that share an Adam update (NumPy's element-wise loops run on one core each)
        self.threads = update_threads() if threads is None else max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._adam_plan: tuple[tuple, list[list[tuple[int, int, int]]]] | None = None

    def _thread_pool(self) -> ThreadPoolExecutor | None:
        """The worker threads (made on first use, and anew in a forked child, which has none)."""
        if self.threads < 2:
            return None
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="mlplab-update")
            self._pool_pid = os.getpid()
        return self._pool

    def _scratch(self, index: int, like: np.ndarray, slot: int = 0) -> np.ndarray:
        scratch = self._scratch_arrays.get((index, slot))
        if scratch is None or scratch.shape != like.shape or scratch.dtype != like.dtype:
            scratch = self._scratch_arrays[(index, slot)] = np.empty_like(like)
        return scratch

    def _axpy(self, index: int, x: np.ndarray, y: np.ndarray) -> Axpy:
        """The plan ``y += a·x`` of parameter ``index``, rebuilt when the arrays change (a
        momentum buffer appears, or load_state_dict replaces the state)."""
        plan = self._plans.get(index)
        if plan is None or not plan.matches(x, y):
            plan = self._plans[index] = Axpy(x, y)
        return plan

    def update(self, optimizer: Optimizer, skip: frozenset[int] = frozenset()) -> None:
        """One step of ``optimizer``; parameters whose index is in ``skip`` (plain SGD only:
        weights already updated inside backward) are left alone."""
        if isinstance(optimizer, SGD):
            self._sgd(optimizer, skip)
        elif isinstance(optimizer, Adam) and not skip:
            self._adam(optimizer)
        elif not skip:
            optimizer.step()
        else:  # pragma: no cover - FusedStep skips parameters for plain SGD only
            raise ValueError(f"Updater: cannot skip parameters of {type(optimizer).__name__}")

    def plain_sgd(self, optimizer: SGD, index: int, lr: float) -> None:
        """p ← p − lr·g for parameter ``index``; the scratch array serves only NumPy's fallback."""
        p, g = optimizer.pairs[index]
        plan = self._axpy(index, g, p)
        plan(-lr, None if plan.function is not None else self._scratch(index, p))

    def _sgd(self, opt: SGD, skip: frozenset[int]) -> None:
        opt.step_count += 1
        if opt.plain:
            for index in range(len(opt.pairs)):
                if index not in skip:
                    self.plain_sgd(opt, index, opt.lr)
            return
        if skip:  # pragma: no cover - FusedStep skips parameters for plain SGD only
            raise ValueError("Updater: only plain SGD skips parameters")
        buffers = opt.state["momentum_buffer"]
        for index, (p, g) in enumerate(opt.pairs):
            scratch = self._scratch(index, p)
            d = g
            if opt.weight_decay:  # d = g + λp, in scratch space
                np.multiply(p, opt.weight_decay, out=scratch)
                scratch += g
                d = scratch
            if opt.momentum:
                buf = buffers[index]
                if buf is None:
                    buf = buffers[index] = np.array(d, copy=True)
                else:
                    buf *= opt.momentum
                    if opt.dampening:
                        buf += (1 - opt.dampening) * d
                    else:
                        buf += d
                if opt.nesterov:
                    if d is not scratch:
                        np.copyto(scratch, d)
                    scratch += opt.momentum * buf
                    d = scratch
                else:
                    d = buf
            self._axpy(index, d, p)(-opt.lr, scratch)

    def _adam(self, opt: Adam) -> None:
        if not all(p.flags.c_contiguous and g.flags.c_contiguous for p, g in opt.pairs):
            opt.step()  # pragma: no cover - every parameter of mlplab.nn is contiguous
            return
        opt.step_count += 1
        beta1, beta2 = opt.betas
        t = opt.step_count
        step_size = opt.lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        for index, (p, _) in enumerate(opt.pairs):
            if opt.state["exp_avg"][index] is None or opt.state["exp_avg_sq"][index] is None:
                # both are made on the first step
                opt.state["exp_avg"][index] = np.zeros_like(p)
                opt.state["exp_avg_sq"][index] = np.zeros_like(p)
        blocks = self._adam_blocks(opt)
        args = (opt, step_size, bias_correction2_sqrt)
        pool = self._thread_pool() if len(blocks) > 1 else None
        if pool is None:
            self._adam_run([item for share in blocks for item in share], 0, *args)
            return
        futures = [pool.submit(self._adam_run, share, k, *args) for k, share in enumerate(blocks[1:], 1)]
        self._adam_run(blocks[0], 0, *args)
        for future in futures:
            future.result()

    def _adam_blocks(self, opt: Adam) -> list[list[tuple[int, int, int]]]:
        """Every parameter cut into blocks of at most BLOCK elements, the blocks dealt out into
        one contiguous share of about equal size per thread (kept until the parameters change)."""
        key = tuple((id(p), p.size) for p, _ in opt.pairs)
        if self._adam_plan is not None and self._adam_plan[0] == key:
            return self._adam_plan[1]
        items = [(i, a, min(p.size, a + BLOCK)) for i, (p, _) in enumerate(opt.pairs) for a in range(0, p.size, BLOCK)]
        total = sum(b - a for _, a, b in items)
        shares: list[list[tuple[int, int, int]]] = [[] for _ in range(self.threads)]
        done = 0
        for item in items:
            shares[min(self.threads - 1, done * self.threads // max(1, total))].append(item)
            done += item[2] - item[1]
        shares = [share for share in shares if share]
        self._adam_plan = (key, shares)
        return shares

    def _adam_run(self, items, slot: int, opt: Adam, step_size: float, bias_correction2_sqrt: float) -> None:
        """The Adam update of ``items`` (parameter, start, stop), in the textbook's order of
        operations on each element, so the result is bit for bit ``Adam.step()``'s."""
        beta1, beta2 = opt.betas
        scratch = self._block_scratch(slot, opt.pairs[0][0].dtype)
        decay = 1 - opt.lr * opt.weight_decay
        for index, a, b in items:
            p_all, g_all = opt.pairs[index]
            p, g = p_all.reshape(-1)[a:b], g_all.reshape(-1)[a:b]
            m = opt.state["exp_avg"][index].reshape(-1)[a:b]
            v = opt.state["exp_avg_sq"][index].reshape(-1)[a:b]
            s1, s2 = scratch[0][: b - a], scratch[1][: b - a]
            if opt.decoupled:
                if opt.weight_decay:
                    p *= decay
            elif opt.weight_decay:
                np.multiply(p, opt.weight_decay, out=s1)
                s1 += g
                g = s1
            m *= beta1
            np.multiply(g, 1 - beta1, out=s2)
            m += s2
            v *= beta2
            np.multiply(g, g, out=s2)
            s2 *= 1 - beta2
            v += s2
            np.sqrt(v, out=s2)  # the denominator √v/√(1 − β₂ᵗ) + ε, in scratch space
            s2 /= bias_correction2_sqrt
            s2 += opt.eps
            np.divide(m, s2, out=s2)
            s2 *= step_size
            p -= s2

    def _block_scratch(self, slot: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        scratch = self._blocks.get(slot)
        if scratch is None or scratch[0].dtype != dtype:
            scratch = self._blocks[slot] = (np.empty(BLOCK, dtype), np.empty(BLOCK, dtype))
        return scratch
