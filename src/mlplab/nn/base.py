"""The base class of every module (NumPy arrays, or any array-API library's: docs/array-api.md).

A module's ``forward(x)`` returns its output and keeps in ``self.cache`` what its backward pass
needs; ``backward(dout)`` returns dL/dx and *overwrites* the arrays in ``self.grads`` (it never
accumulates), writing into them in place so that an optimiser holding references to them sees
the new values. ``params`` and ``grads`` share keys and shapes. Buffers (batch-norm running
statistics) live in ``buffers`` and are saved with the parameters, but receive no gradient.

Every pass takes its namespace from its arrays (``xp = namespace(x)``), so a module tree moved
with :meth:`Module.to` runs on PyTorch tensors, CuPy or array-api-strict unchanged. The standard
has no ``out=``: :func:`into` writes a result into an existing array with NumPy's ``out=`` on
NumPy (no temporary) and the standard's ``target[...] = value`` elsewhere, so the gradient arrays
an optimiser holds stay the same objects on every library.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mlplab.xp import asarray, namespace, to_numpy
from mlplab.xp import device as device_of


class Module:
    """Base class: parameters, buffers, child modules, train/eval mode and the state dict."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.cache: dict[str, object] = {}
        self.training = True
        self._children: dict[str, Module] = {}

    # -- the two passes -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # -- structure ----------------------------------------------------------------------
    def add_module(self, name: str, module: Module) -> None:
        """Register ``module`` as a child named ``name`` (used in state-dict keys)."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: child {name!r} is a {type(module).__name__}, not a Module")
        self._children[name] = module

    def children(self) -> Iterator[Module]:
        yield from self._children.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield ``(dotted name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(dotted name, param, grad)`` for every parameter, in registration order."""
        for module_name, module in self.named_modules(prefix):
            for key, param in module.params.items():
                yield (f"{module_name}.{key}" if module_name else key), param, module.grads[key]

    def parameters(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(param, grad)`` array pairs, the form the optimisers take."""
        for _, param, grad in self.named_parameters():
            yield param, grad

    def num_parameters(self) -> int:
        return int(sum(p.size for p, _ in self.parameters()))

    # -- modes and caches ---------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def clear_cache(self) -> None:
        """Drop every cached array, so the module can be copied or pickled small."""
        for _, module in self.named_modules():
            module.cache = {}

    def zero_grad(self) -> None:
        for _, _, grad in self.named_parameters():
            fill_zero(grad)

    # -- the array library ----------------------------------------------------------------
    def to(self, xp: Any, device: Any = None) -> Module:
        """Move every parameter, gradient and buffer of this tree to the array namespace ``xp``
        (a namespace, or a name of :data:`mlplab.xp.LIBRARIES`) on ``device``; returns self.

        The arrays are replaced by new ones, so build the optimiser after moving the model (or
        build a new one). Caches are dropped. ``to(numpy)`` brings everything back to NumPy."""
        if isinstance(xp, str):
            from mlplab.xp import library

            xp = library(xp)
        for _, module in self.named_modules():
            for store in (module.params, module.grads, module.buffers):
                for key, value in store.items():
                    # through a NumPy copy: a CPU tensor made from a NumPy array would share its memory
                    store[key] = asarray(np.array(to_numpy(value), copy=True), xp, device=device)
            module.cache = {}
        return self

    # -- state dict ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed like PyTorch's ``state_dict()``: NumPy
        arrays whatever library the module runs on."""
        state: dict[str, np.ndarray] = {}
        for module_name, module in self.named_modules():
            for key, value in (*module.params.items(), *module.buffers.items()):
                state[f"{module_name}.{key}" if module_name else key] = np.array(to_numpy(value), copy=True)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy ``state`` into the existing arrays (in place, so optimiser references stay valid),
        on whatever library and device they live.

        With ``strict`` every key must match and no key may be extra; shapes must always match.
        """
        targets: dict[str, np.ndarray] = {}
        for module_name, module in self.named_modules():
            for key, value in (*module.params.items(), *module.buffers.items()):
                targets[f"{module_name}.{key}" if module_name else key] = value
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for key, target in targets.items():
            if key not in state:
                continue
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key} has shape {value.shape}, "
                    f"the model expects {target.shape}"
                )
            if isinstance(target, np.ndarray):
                target[...] = value
            else:
                target[...] = asarray(value, namespace(target), device=device_of(target), dtype=target.dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._children:
            for name, child in self._children.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {child_repr}")
            lines.append("\n")
        lines.append(")")
        return "".join(lines)

    # -- one walk with a tape, and the R-operator (docs/hessian.md) ------------------------
    # A leaf module overrides r_missing/r_state/r_forward/r_backward with its own rules, beside
    # its backward; a container overrides the record_*/r_* walks to visit its children. The
    # tape (a dict keyed by id(module)) keeps each module's entry across the passes, so one
    # forward and backward serve every later Hessian-vector product, and the gradient tracking.
    def record_forward(self, x: np.ndarray, tape: dict) -> np.ndarray:
        """``forward(x)``, keeping in ``tape[id(self)]`` what the R passes need (``r_state``)."""
        if self._children:
            raise TypeError(f"no recorded forward for the container {type(self).__name__}")
        out = self.forward(x)
        tape[id(self)] = self.r_state(x)
        return out

    def record_backward(self, dout: np.ndarray, tape: dict, need_input_grad: bool = True) -> np.ndarray | None:
        """``backward(dout)``, keeping dout and the returned dx in ``tape[id(self)]``."""
        if self._children:
            raise TypeError(f"no recorded backward for the container {type(self).__name__}")
        dx = self.backward(dout)
        tape.setdefault(id(self), {}).update(dout=dout, dx=dx)
        return dx

    def input_readers(self) -> tuple[Module, ...]:
        """The children that read this module's own input tensor (none for a leaf)."""
        return ()

    def r_missing(self) -> str | None:
        """None if this module has an exact R-operator rule in its current mode, else why not."""
        return type(self).__name__

    def r_state(self, x: np.ndarray) -> dict:
        """What r_forward and r_backward need from the plain forward pass on ``x``."""
        raise NotImplementedError(f"{type(self).__name__} has no R-operator rule")

    def r_forward(self, rx: np.ndarray | None, tape: dict, r: RDirection) -> np.ndarray | None:
        """R{y} from R{x} (None stands for zero, as for the data)."""
        raise NotImplementedError(f"{type(self).__name__} has no R-operator rule")

    def r_backward(
        self, rdout: np.ndarray, tape: dict, r: RDirection, need_input_grad: bool = True
    ) -> np.ndarray | None:
        """R{dx} from R{dout}; adds R{dθ} of each parameter into ``r.hv[id(self)]``."""
        raise NotImplementedError(f"{type(self).__name__} has no R-operator rule")


class RDirection:
    """One Hessian-vector product in progress (docs/hessian.md, "Hessian–vector products: the
    R-operator"): the direction ``v`` and the result ``hv`` as ``{id(module): {key: array}}``,
    and R{x} of each module, which its r_forward keeps in ``rx`` for its r_backward."""

    def __init__(self, v: dict[int, dict[str, np.ndarray]], hv: dict[int, dict[str, np.ndarray]]):
        self.v = v
        self.hv = hv
        self.rx: dict[int, np.ndarray | None] = {}


def is_array(x: Any) -> bool:
    """Whether ``x`` is a NumPy array or another array-API library's (a torch tensor, a CuPy
    array, an array-api-strict array), not a list or a number."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (np.generic, int, float, complex, str, bytes, list, tuple)) or x is None:
        return False
    try:
        import array_api_compat
    except ImportError:
        return False
    return bool(array_api_compat.is_array_api_obj(x))


def check_array(module: Module, x: Any, what: str = "input") -> None:
    """Raise a ValueError naming ``module`` unless ``x`` is an array (see :func:`is_array`)."""
    if not is_array(x):
        raise ValueError(
            f"{type(module).__name__}: {what} must be a NumPy array (or another array-API "
            f"library's), got {type(x).__name__}"
        )


def into(target: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``target[...] = function(*args, **kwargs)``, returning ``target``: on NumPy through
    ``out=target`` (no temporary), elsewhere with the standard's in-place assignment, which
    keeps ``target`` the same object (the optimiser holds the gradient arrays)."""
    if isinstance(target, np.ndarray):
        function(*args, out=target, **kwargs)
    else:
        target[...] = function(*args, **kwargs)
    return target


def fill_zero(target: Any) -> None:
    """Set every element of ``target`` to zero, in place."""
    if isinstance(target, np.ndarray):
        target.fill(0)
    else:
        target[...] = 0


def check_2d(module: Module, x: np.ndarray, features: int | None = None, what: str = "input") -> None:
    """Raise a ValueError naming ``module`` unless ``x`` is (batch, features) with batch >= 1."""
    name = type(module).__name__
    check_array(module, x, what)
    if x.ndim != 2:
        raise ValueError(f"{name}: {what} must be 2-D (batch, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: {what} has an empty batch, shape {x.shape}")
    if features is not None and x.shape[1] != features:
        raise ValueError(f"{name}: {what} has {x.shape[1]} features, expected {features} (shape {x.shape})")


def check_dout(module: Module, dout: np.ndarray, expected_shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``module`` unless ``dout`` has the shape of the forward output."""
    if getattr(dout, "shape", None) != tuple(expected_shape):
        raise ValueError(
            f"{type(module).__name__}.backward: dout has shape {getattr(dout, 'shape', None)}, "
            f"the forward output had shape {tuple(expected_shape)}"
        )


def require_cache(module: Module, key: str) -> Any:
    """The cached value ``key``, or a clear error when backward is called before forward.

    Typed ``Any``: the cache holds arrays, shapes and flags, and each backward knows which it stored."""
    try:
        return module.cache[key]
    except KeyError:
        raise RuntimeError(f"{type(module).__name__}.backward called before forward (no cached {key!r})") from None
