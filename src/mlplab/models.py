"""The NumPy multilayer perceptron, and its layer plan (which the PyTorch twin reads too)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np

from mlplab.nn import BatchNorm1d, Dropout, Linear, Module, Residual, Sequential, make_activation, softmax
from mlplab.nn.activations import ACTIVATIONS
from mlplab.nn.linear import as_positive_int
from mlplab.xp import is_numpy, namespace


def hidden_widths(n_hidden, owner: str = "MLP") -> list[int]:
    """``n_hidden`` (an int, or a sequence of ints, possibly empty) as a list of positive ints."""
    if isinstance(n_hidden, (numbers.Integral, np.integer)) and not isinstance(n_hidden, bool):
        n_hidden = [n_hidden]
    if not isinstance(n_hidden, Iterable) or isinstance(n_hidden, (str, bytes)):
        raise ValueError(f"{owner}: n_hidden must be a list of positive integers, got {n_hidden!r}")
    return [as_positive_int(width, "each hidden width", owner) for width in n_hidden]


def as_seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.SeedSequence(None if seed is None else int(seed))


def predict_in_chunks(logits_of, x: np.ndarray, n_classes: int, dtype, batch_size: int = 1024) -> np.ndarray:
    """``logits_of`` applied to ``x`` ``batch_size`` rows at a time, into one (N, n_classes) array of
    ``dtype``: the chunked prediction of both MLPs (the NumPy one here, the torch backend's).
    Arrays of another library than NumPy give the chunks joined in that library."""
    if not isinstance(x, np.ndarray):
        xp = namespace(x)
        n = x.shape[0]  # slices stay inside the array: the standard leaves the rest unspecified
        return xp.concat(
            [logits_of(x[start : min(start + batch_size, n), ...]) for start in range(0, n, batch_size)], axis=0
        )
    out = np.empty((x.shape[0], n_classes), dtype=dtype)
    for start in range(0, x.shape[0], batch_size):
        out[start : start + batch_size] = logits_of(x[start : start + batch_size])
    return out


@dataclass(frozen=True)
class LayerSpec:
    """One entry of an MLP's layer plan.

    ``kind`` is ``linear`` (``in_width`` -> ``width``; ``input_layer`` picks the init),
    ``batch_norm`` (over ``width`` features), ``activation`` (``activation`` names it),
    ``dropout`` (rate ``p``) or ``residual`` (``x + block(x)`` around the specs in ``block``)."""

    kind: str
    width: int = 0
    in_width: int = 0
    input_layer: bool = False
    activation: str = ""
    p: float = 0.0
    block: tuple[LayerSpec, ...] = ()


def architecture(
    n_inputs, n_hidden, n_classes, *, activation="elu", use_batch_norm=False, dropout=0.0, residual=False
) -> dict:
    """The validated, normalised constructor arguments of an MLP (both :class:`MLP` and
    :class:`mlplab.torch.MLP` take them): what ``config()`` returns and :func:`layer_plan` reads."""
    key = str(activation).lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"MLP: unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= float(dropout) < 1:
        raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout!r}")
    return {
        "n_inputs": as_positive_int(n_inputs, "n_inputs", "MLP"),
        "n_hidden": hidden_widths(n_hidden),
        "n_classes": as_positive_int(n_classes, "n_classes", "MLP"),
        "activation": key,
        "use_batch_norm": bool(use_batch_norm),
        "dropout": float(dropout),
        "residual": bool(residual),
    }


def layer_plan(
    n_inputs: int,
    n_hidden: list[int],
    n_classes: int,
    *,
    activation: str,
    use_batch_norm: bool,
    dropout: float,
    residual: bool,
) -> list[LayerSpec]:
    """The layers of an MLP, in order: [Linear → (BatchNorm1d) → activation → (Dropout)] per hidden
    width (inside a Residual when ``residual`` and the width is kept), then Linear to the classes.

    Both :class:`MLP` and :class:`mlplab.torch.MLP` build their modules from this list, so the
    two cannot disagree on layer order, parameter names (``layers.<index>...``) or which Linear
    gets the input-layer init."""
    plan: list[LayerSpec] = []
    width = n_inputs
    for index, hidden in enumerate(n_hidden):
        block = [LayerSpec("linear", hidden, width, input_layer=index == 0)]
        if use_batch_norm:
            block.append(LayerSpec("batch_norm", hidden))
        block.append(LayerSpec("activation", hidden, activation=activation))
        if dropout > 0:
            block.append(LayerSpec("dropout", hidden, p=dropout))
        if residual and width == hidden:
            plan.append(LayerSpec("residual", hidden, width, block=tuple(block)))
        else:
            plan.extend(block)
        width = hidden
    plan.append(LayerSpec("linear", n_classes, width, input_layer=not n_hidden))
    return plan


def build_model(config, n_inputs: int, n_classes: int, seed, dtype=None) -> MLP:
    """The NumPy MLP a training configuration (:class:`mlplab.config.TrainConfig`) asks for,
    with its initial weights drawn from ``seed`` (an int or a SeedSequence)."""
    dtype = dtype or (np.float64 if config.dtype == "float64" else np.float32)
    return MLP(
        n_inputs,
        config.hidden_dims,
        n_classes,
        activation=config.activation,
        use_batch_norm=config.use_batch_norm,
        dropout=config.dropout,
        residual=config.residual,
        dtype=dtype,
        seed=seed,
    )


class MLP(Module):
    """Multilayer perceptron: [Linear → (BatchNorm1d) → activation → (Dropout)] for each hidden
    width, then Linear to the classes. x: (batch, n_inputs) -> logits (batch, n_classes).

    The first Linear uses the input-layer init (std sqrt(1/in)); the others sqrt(2/in). An empty
    ``n_hidden`` gives softmax regression. With ``residual=True`` every hidden block whose input
    and output widths are equal is wrapped in :class:`~mlplab.nn.Residual`. ``seed`` (an int or a
    ``SeedSequence``) fixes the initial weights and the dropout masks, from independent streams.
    Parameter names follow ``mlplab.torch.MLP``'s ``state_dict()`` (``layers.0.weight``, …).
    """

    activation: str
    use_batch_norm: bool
    dropout: float
    residual: bool
    dtype: np.dtype
    dropout_rng: np.random.Generator

    def __init__(
        self,
        n_inputs,
        n_hidden,
        n_classes,
        *,
        activation: str = "elu",
        use_batch_norm: bool = False,
        dropout: float = 0.0,
        residual: bool = False,
        dtype=np.float64,
        seed=None,
    ):
        super().__init__()
        arch = architecture(
            n_inputs,
            n_hidden,
            n_classes,
            activation=activation,
            use_batch_norm=use_batch_norm,
            dropout=dropout,
            residual=residual,
        )
        self.n_inputs, self.n_hidden, self.n_classes = arch["n_inputs"], arch["n_hidden"], arch["n_classes"]
        self.activation, self.use_batch_norm = arch["activation"], arch["use_batch_norm"]
        self.dropout, self.residual = arch["dropout"], arch["residual"]
        self.dtype = np.dtype(dtype)
        init_seq, dropout_seq = as_seed_sequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        self.dropout_rng = np.random.default_rng(dropout_seq)

        def build(spec: LayerSpec) -> Module:
            if spec.kind == "linear":
                return Linear(spec.in_width, spec.width, input_layer=spec.input_layer, dtype=self.dtype, rng=init_rng)
            if spec.kind == "batch_norm":
                return BatchNorm1d(spec.width, dtype=self.dtype)
            if spec.kind == "activation":
                return make_activation(spec.activation)
            if spec.kind == "dropout":
                return Dropout(spec.p, rng=self.dropout_rng)
            return Residual(Sequential(*map(build, spec.block)))

        # built in plan order: the Linears draw their initial weights from init_rng in that order
        layers = [build(spec) for spec in self.plan()]
        self.add_module("layers", Sequential(*layers))

    @property
    def layers(self) -> Sequential:
        return cast(Sequential, self._children["layers"])  # __init__ registers a Sequential under this name

    def plan(self) -> list[LayerSpec]:
        """This MLP's :func:`layer_plan`."""
        return layer_plan(**self.config())

    def config(self) -> dict:
        """The constructor arguments (without seed), enough to rebuild the architecture."""
        return {
            "n_inputs": self.n_inputs,
            "n_hidden": list(self.n_hidden),
            "n_classes": self.n_classes,
            "activation": self.activation,
            "use_batch_norm": self.use_batch_norm,
            "dropout": self.dropout,
            "residual": self.residual,
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (batch, n_inputs) -> logits (batch, n_classes)."""
        return self.layers.forward(x)

    def backward(self, dlogits: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:  # type: ignore[override]  # None with need_input_grad=False
        """dlogits: (batch, n_classes); fills every ``grads`` and returns dL/dx (batch, n_inputs),
        or None with ``need_input_grad=False`` (saves the first layer's largest product)."""
        return self.layers.backward(dlogits, need_input_grad=need_input_grad)

    def predict_logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits in eval mode, computed ``batch_size`` rows at a time; the mode is restored."""
        was_training = self.training
        self.eval()
        try:
            dtype = np.result_type(x.dtype, self.dtype) if is_numpy(namespace(x)) else None
            return predict_in_chunks(self.forward, x, self.n_classes, dtype, batch_size)
        finally:
            self.clear_cache()
            self.train(was_training)

    def predict_proba(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (batch, n_classes), in eval mode."""
        return softmax(self.predict_logits(x, batch_size))

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Predicted class indices (batch,), in eval mode."""
        return namespace(x).argmax(self.predict_logits(x, batch_size), axis=1)

    def extra_repr(self) -> str:
        return f"{self.n_inputs} -> {self.n_hidden} -> {self.n_classes}, activation={self.activation!r}"

    # -- the walks with a tape (docs/hessian.md, "Hessian–vector products: the R-operator") ----
    def input_readers(self) -> tuple[Module, ...]:
        return (self.layers,)

    def r_missing(self) -> str | None:
        return None

    def record_forward(self, x, tape):
        return self.layers.record_forward(x, tape)

    def record_backward(self, dout, tape, need_input_grad=True):
        dx = self.layers.record_backward(dout, tape, need_input_grad)
        tape.setdefault(id(self), {})["dx"] = dx
        return dx

    def r_forward(self, rx, tape, r):
        return self.layers.r_forward(rx, tape, r)

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        return self.layers.r_backward(rdout, tape, r, need_input_grad)
