"""The named mistakes ``mlplab check`` recognises: what each one is, the right formula, and the
section of docs/backprop.md that derives it (a test keeps every cited section real)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    id: str
    module: str
    title: str
    formula: str
    section: str  # a "## " heading of docs/backprop.md


_LINEAR_GRADS = "dW = dYᵀ X (shape out × in), db = 1ᵀ dY (a sum over the batch, shape out), dX = dY W (shape S × in)"

MISTAKES: dict[str, Mistake] = {
    m.id: m
    for m in (
        Mistake("linear-weight-grad-transposed", "LinearModule", "dW transposed", _LINEAR_GRADS, "Linear"),
        Mistake("linear-weight-grad-scale", "LinearModule", "dW off by a constant factor", _LINEAR_GRADS, "Linear"),
        Mistake("linear-bias-grad", "LinearModule", "db not the batch sum of dY", _LINEAR_GRADS, "Linear"),
        Mistake("linear-input-grad", "LinearModule", "dX not dY W", _LINEAR_GRADS, "Linear"),
        Mistake(
            "linear-init",
            "LinearModule",
            "initialisation statistics",
            "W ~ N(0, 2/in), or N(0, 1/in) with input_layer=True; b = 0",
            "Linear",
        ),
        Mistake(
            "elu-backward",
            "ELUModule",
            "ELU derivative wrong on one side",
            "dX = dY ⊙ h'(X) with h'(x) = 1 for x > 0 and α eˣ = h(x) + α for x ≤ 0",
            "Element-wise activations",
        ),
        Mistake(
            "softmax-overflow",
            "SoftMaxModule",
            "softmax overflows on large logits",
            "yᵢ = exp(xᵢ − m) / Σₖ exp(xₖ − m) with m the maximum of each row",
            "Softmax",
        ),
        Mistake(
            "softmax-backward-diagonal",
            "SoftMaxModule",
            "softmax backward keeps only the Jacobian's diagonal",
            "dX = Y ⊙ (dY − rowsum(dY ⊙ Y))",
            "Softmax",
        ),
        Mistake(
            "cross-entropy-not-mean",
            "CrossEntropyModule",
            "loss summed over the batch",
            "L = −(1/S) Σₛ log p[s, yₛ] (a mean over the batch)",
            "Cross-entropy on probabilities",
        ),
        Mistake(
            "cross-entropy-grad-scale",
            "CrossEntropyModule",
            "gradient scale wrong",
            "dL/dp[s, c] = −t[s, c] / (S p[s, c])",
            "Cross-entropy on probabilities",
        ),
        Mistake(
            "cross-entropy-log-zero",
            "CrossEntropyModule",
            "log of a zero probability",
            "evaluate log p and 1/p at max(p, ε) for a small ε such as 1e-12",
            "Cross-entropy on probabilities",
        ),
        Mistake(
            "stale-cache",
            "",
            "backward uses an earlier forward call's values",
            "forward(x) stores what backward needs from this x, replacing what an earlier call stored",
            "Notation and the contract of `backward`",
        ),
        Mistake(
            "mlp-structure",
            "MLP",
            "MLP layers differ from the specification",
            "Linear(n_inputs, h₁, input_layer=True), ELU, Linear(h₁, h₂), ELU, …, Linear(h_last, n_classes), Softmax",
            "Sequential and the whole MLP",
        ),
    )
}

#: the id of a failure that matches no named mistake
UNRECOGNISED = "unrecognised"

#: where docs/backprop.md derives each module, for failures that match no named mistake
MODULE_SECTIONS = {
    "LinearModule": "Linear",
    "ELUModule": "Element-wise activations",
    "SoftMaxModule": "Softmax",
    "CrossEntropyModule": "Cross-entropy on probabilities",
    "MLP": "Sequential and the whole MLP",
}
