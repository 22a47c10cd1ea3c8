"""The optimisers' updates of :mod:`mlplab.optim` without temporaries: each parameter gets
scratch arrays kept between steps and a BLAS axpy for the final p ← p − a·d.

The formulas, state and step counter are the optimiser's own (``optimizer.state``,
``optimizer.step_count``), so a run can switch between this and ``optimizer.step()`` at any
step, and a checkpoint does not say which was used. Why it pays: NumPy's ``p -= lr * d`` makes a
temporary and two passes on one core, and every large temporary is page-faulted in anew on each
step (figures in the :mod:`mlplab.fast` docstring).
"""

from __future__ import annotations

import math

import numpy as np

from mlplab.fast._blas import Axpy
from mlplab.optim import SGD, Adam, Optimizer


class Updater:
    """``update(optimizer)``: one ``optimizer.step()``, computed in place. SGD (plain, momentum,
    Nesterov, weight decay, dampening), Adam and AdamW; any other optimiser steps itself."""

    def __init__(self) -> None:
        self._plans: dict[int, Axpy] = {}
        self._scratch_arrays: dict[tuple[int, int], np.ndarray] = {}

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
        opt.step_count += 1
        beta1, beta2 = opt.betas
        t = opt.step_count
        step_size = opt.lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        for index, (p, g) in enumerate(opt.pairs):
            s1, s2 = self._scratch(index, p, 0), self._scratch(index, p, 1)
            if opt.decoupled:
                if opt.weight_decay:
                    p *= 1 - opt.lr * opt.weight_decay
            elif opt.weight_decay:
                np.multiply(p, opt.weight_decay, out=s1)
                s1 += g
                g = s1
            m, v = opt.state["exp_avg"][index], opt.state["exp_avg_sq"][index]
            if m is None or v is None:  # both are made on the first step
                m = opt.state["exp_avg"][index] = np.zeros_like(p)
                v = opt.state["exp_avg_sq"][index] = np.zeros_like(p)
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
            self._axpy(index, s2, p)(-step_size)
