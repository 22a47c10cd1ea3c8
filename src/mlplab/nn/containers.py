"""Containers: Sequential and the residual connection (docs/backprop.md, "Residual connections", "Sequential and the whole MLP")."""

from __future__ import annotations

import numpy as np

from mlplab.nn.base import Module, check_dout, require_cache
from mlplab.nn.linear import Linear


def _backward(module: Module, dout: np.ndarray, need_input_grad: bool):
    if not need_input_grad and isinstance(module, (Linear, Sequential)):
        return module.backward(dout, need_input_grad=False)
    return module.backward(dout)


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", … as in ``torch.nn.Sequential``."""

    def __init__(self, *modules: Module):
        super().__init__()
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, index: int) -> Module:
        return list(self._children.values())[index]

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        for module in self._children.values():
            x = module.forward(x)
        return x

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:  # type: ignore[override]  # None with need_input_grad=False
        """Backward through the modules in reverse. ``need_input_grad=False`` lets a first
        Linear skip its dx product (training never needs the gradient of the data)."""
        modules = list(self._children.values())
        for module in reversed(modules[1:]):
            dout = module.backward(dout)
        if modules:
            dout = _backward(modules[0], dout, need_input_grad)
        return dout

    # -- the walks with a tape (docs/hessian.md, "Hessian–vector products: the R-operator") ----
    def input_readers(self) -> tuple[Module, ...]:
        return tuple(self._children.values())[:1]

    def r_missing(self) -> str | None:
        return None

    def record_forward(self, x, tape):
        for module in self._children.values():
            x = module.record_forward(x, tape)
        return x

    def record_backward(self, dout, tape, need_input_grad=True):
        modules = list(self._children.values())
        for index in range(len(modules) - 1, -1, -1):
            dout = modules[index].record_backward(dout, tape, need_input_grad or index > 0)
        tape.setdefault(id(self), {})["dx"] = dout
        return dout

    def r_forward(self, rx, tape, r):
        for module in self._children.values():
            rx = module.r_forward(rx, tape, r)
        return rx

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        modules = list(self._children.values())
        for index in range(len(modules) - 1, -1, -1):
            rdout = modules[index].r_backward(rdout, tape, r, need_input_grad or index > 0)
        return rdout


def _linear_widths(block: Module) -> tuple[int | None, int | None]:
    linears = [m for _, m in block.named_modules() if isinstance(m, Linear)]
    if not linears:
        return None, None
    return linears[0].in_features, linears[-1].out_features


class Residual(Module):
    """Residual connection Y = X + block(X); backward dX = dY + block.backward(dY).

    The identity path hands dY to the input unchanged, however small block's own Jacobian is.
    The block must keep the width: a block whose Linear layers change it is refused here, and
    any other mismatch at the first forward, with both widths named.
    """

    def __init__(self, block: Module):
        super().__init__()
        width_in, width_out = _linear_widths(block)
        if width_in is not None and width_in != width_out:
            raise ValueError(
                f"Residual: the block maps width {width_in} to width {width_out}; "
                "a residual connection needs equal input and output widths"
            )
        self.add_module("block", block)

    @property
    def block(self) -> Module:
        return self._children["block"]

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.block.forward(x)
        if out.shape != x.shape:
            raise ValueError(
                f"Residual: the block maps width {x.shape[-1]} to width {out.shape[-1]} "
                f"(input shape {x.shape}, block output shape {out.shape}); "
                "a residual connection needs equal input and output widths"
            )
        self.cache["shape"] = x.shape
        return out + x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        shape = require_cache(self, "shape")
        check_dout(self, dout, shape)
        return dout + self.block.backward(dout)

    # -- the walks with a tape: docs/backprop.md, "Residual connections" ---------------------
    def input_readers(self) -> tuple[Module, ...]:
        return (self.block,)

    def r_missing(self) -> str | None:
        return None

    def record_forward(self, x, tape):
        return x + self.block.record_forward(x, tape)

    def record_backward(self, dout, tape, need_input_grad=True):
        dx = dout + self.block.record_backward(dout, tape)
        tape.setdefault(id(self), {})["dx"] = dx
        return dx

    def r_forward(self, rx, tape, r):
        """R{y} = R{x} + R{block(x)}."""
        rblock = self.block.r_forward(rx, tape, r)
        return rblock if rx is None else rblock + rx

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        """R{dx} = R{dout} + R{dx through the block}."""
        return rdout + self.block.r_backward(rdout, tape, r)
