"""The NumPy fast path: every speed trick of the NumPy backend, in one place, switchable.

``mlplab.nn`` is the derivation of docs/backprop.md and nothing else: each ``backward`` fills
``grads`` with dW = dYᵀX, db = 1ᵀdY and returns dX = dY·W, h′(X) ⊙ dY, (p − t)/S. This package
computes the same training step faster. The NumPy backend uses it when it is switched on
(the default); ``NumpyBackend(..., fast=False)``, ``MLPLAB_FAST=0`` in the environment, or
``MLPLAB_NO_BLAS_AXPY=1`` (BLAS calls only) turn it off, and the step is then the textbook one:
``model.forward``, ``loss.forward_backward``, ``model.backward``, ``optimizer.step()``.
tests/test_fast_path.py holds the two paths to the same losses and weights.

The tricks, what each saves (figures measured on the development machine, float32; the
benchmark is ``python benchmarks/run.py``):

- **Fused plain-SGD weight update** (:mod:`mlplab.fast.step`): with plain SGD (no momentum, no
  weight decay) W ← W − lr·dYᵀX is one BLAS ``gemm`` call, C ← αAᵀB + C
  (:func:`mlplab.fast._blas.gemm_tn_update`), so dW is never written out and read back.
  At width 128 and batch 32 that is 8 % of a step. Bit for bit the unfused update up to a batch
  of about 256 (beyond that BLAS sums the batch in blocks and float32 rounds differently).
- **Only large weights are fused** (:data:`mlplab.fast.step.FUSE_MIN_WEIGHT`, 8,192 elements):
  the fused call costs ~5 µs more Python and ctypes work and saves ~0.65 µs per thousand
  elements, so the 128 → 10 output layer is updated the ordinary way.
- **One-pass parameter update** ``p += a·x`` through BLAS ``axpy`` (:mod:`mlplab.fast._blas`),
  on NumPy's own OpenBLAS: NumPy's ``p -= lr * g`` makes a temporary and two passes on one core
  (a 2048×3072 float32 update: 5.6 ms against 1.4 ms). :class:`~mlplab.fast._blas.Axpy` plans
  look the pointers up once (~3.7 µs a call, more than a bias update itself).
- **Optimiser updates in place** (:mod:`mlplab.fast.update`): the formulas of
  :mod:`mlplab.optim` (SGD with momentum, Nesterov, weight decay; Adam, AdamW) with one or two
  scratch arrays per parameter (per thread, for Adam) kept between steps, so nothing is allocated
  per step (large temporaries are page-faulted in anew each time); SGD's final p ← p − a·d goes
  through axpy.
- **Adam and AdamW in blocks, on every core** (:meth:`mlplab.fast.update.Updater._adam`): each
  parameter is cut into blocks of 65,536 elements (:data:`mlplab.fast.update.BLOCK`), so the
  thirteen element-wise passes of an update run on a block while it sits in the core's L2 cache
  instead of streaming 12 MB arrays from memory thirteen times; the blocks are shared out between
  threads (``MLPLAB_UPDATE_THREADS``, default the cores, at most 4), because NumPy's element-wise
  loops use one core and BLAS is idle during the update. Every element sees the textbook's
  operations in the textbook's order, so the result is bit for bit ``Adam.step()``'s. One AdamW
  step of the 3072-1024-512-10 net (3.7 M float32 parameters): textbook 8.3 ms, the former
  whole-array fast path 6.6 ms, blocked on one thread 5.4 ms, on two 3.5 ms.
- **Loss and its gradient in one softmax pass** (:mod:`mlplab.fast.loss`): the exponentials are
  kept and turned into (p − t)/S in place; reductions are called as ``ufunc.reduce`` (the array
  methods' Python wrappers took a third of the loss's time on a 32×10 batch); the target entry
  is addressed in the flattened array, row·C + label, with the row offsets kept between calls
  (half the cost of a (rows, labels) index pair).

One numerical choice stays in ``mlplab.nn`` because it is the module's formula, not a schedule:
float32 ELU computes eˣ − 1 as ``exp(x) − 1`` (NumPy's float32 ``expm1`` is not vectorised and
costs nine times ``exp``; the absolute error is below 1e-7); float64 uses ``expm1``.
"""

from __future__ import annotations

import os


def enabled(fast: bool | None = None) -> bool:
    """Whether to use the fast path: ``fast`` when given, else ``MLPLAB_FAST`` (default on;
    ``0``, ``false``, ``no`` or ``off`` turn it off)."""
    if fast is not None:
        return bool(fast)
    return os.environ.get("MLPLAB_FAST", "1").strip().lower() not in ("0", "false", "no", "off")
