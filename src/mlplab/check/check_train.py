"""``--train``: the learner's MLP and mlplab's, from the same initial weights, on the same batches.

Both take 20 plain-SGD steps on digits. mlplab's side is its MLP (logits) with the fused
softmax-cross-entropy; the learner's side is their MLP (probabilities) with their
CrossEntropyModule, so the comparison covers their whole pipeline. They part at the first step
whose losses differ by more than rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlplab.check import check_mlp
from mlplab.check.check_linear import grad_arrays, param_arrays
from mlplab.check.context import LearnerError, Probe

STEPS, BATCH, LR, HIDDEN = 20, 32, 0.1, [32, 16]
PART_TOL = 1e-6


def losses_part(mine: float, theirs: float) -> bool:
    return not np.isfinite(theirs) or abs(mine - theirs) > PART_TOL * max(1.0, abs(mine))


def check(probe: Probe, mlp_cls, classes: dict, ce_cls, labels_as) -> None:
    from mlplab.data.digits import load_digits
    from mlplab.models import MLP
    from mlplab.nn import SoftmaxCrossEntropy

    row = probe.row("training", f"{STEPS} SGD steps on digits (lr {LR}, batch {BATCH}) against mlplab")
    record: dict[str, Any] = {
        "type": "train",
        "steps": STEPS,
        "batch": BATCH,
        "lr": LR,
        "hidden": HIDDEN,
        "mlplab": [],
        "yours": [],
        "parted_at": None,
        "error": None,
    }
    splits = load_digits(progress=False)
    x_all, y_all = splits.train.x.astype(np.float64), splits.train.y
    order = probe.rng().permutation(len(y_all))[: STEPS * BATCH]
    n_in, classes_n = x_all.shape[1], 10
    ref = MLP(n_in, HIDDEN, classes_n, seed=probe.seed)
    loss_fn = SoftmaxCrossEntropy()
    try:
        built = check_mlp.build(probe, mlp_cls, classes, n_in, HIDDEN, classes_n, x_all[order[:BATCH]])
        problem = check_mlp.structure_difference(built, n_in, HIDDEN, classes_n)
        if problem:
            raise LearnerError(f"not run: {problem}")
        mine_linears = [m for _, m in ref.named_modules() if type(m).__name__ == "Linear"]
        theirs = built.linears()
        for layer, source in zip(theirs, mine_linears):
            weight, bias = param_arrays(probe, layer, *source.params["weight"].shape)
            weight[...] = source.params["weight"]
            bias[...] = source.params["bias"].reshape(bias.shape)
        ce = probe.call("CrossEntropyModule()", ce_cls)
        for step in range(STEPS):
            index = order[step * BATCH : (step + 1) * BATCH]
            xb, yb = x_all[index], y_all[index]
            logits = ref.forward(xb)
            loss, dlogits = loss_fn.forward_backward(logits, yb)
            ref.backward(dlogits)
            for param, grad in ref.parameters():
                param -= LR * grad
            probs = probe.array(
                "MLP.forward", probe.call(f"MLP.forward (training step {step + 1})", built.mlp.forward, xb.copy())
            )
            given = labels_as(yb, classes_n)
            their_loss = probe.scalar(
                "CrossEntropyModule.forward",
                probe.call(f"CrossEntropyModule.forward (training step {step + 1})", ce.forward, probs, given),
            )
            dprobs = probe.array(
                "CrossEntropyModule.backward",
                probe.call(f"CrossEntropyModule.backward (training step {step + 1})", ce.backward, probs, given),
            )
            probe.call(f"MLP.backward (training step {step + 1})", built.mlp.backward, dprobs)
            for layer in theirs:
                dw, db = grad_arrays(probe, layer)
                layer.params["weight"][...] -= LR * dw.reshape(layer.params["weight"].shape)
                layer.params["bias"][...] -= LR * db.reshape(layer.params["bias"].shape)
            record["mlplab"].append(float(loss))
            record["yours"].append(float(their_loss))
            if record["parted_at"] is None and losses_part(float(loss), float(their_loss)):
                record["parted_at"] = step + 1
    except LearnerError as exc:
        record["error"] = str(exc)
        row.fail(str(exc), kind="error" if not str(exc).startswith("not run") else "consequence")
    else:
        if record["parted_at"] is not None:
            step = record["parted_at"]
            row.fail(
                f"the losses part at step {step}: mlplab {record['mlplab'][step - 1]:.8g}, "
                f"yours {record['yours'][step - 1]:.8g}",
                kind="consequence" if probe.failed_modules else "numbers",
            )
    probe.write(record)
    row.done(f"the losses agree at every step (to {PART_TOL:g} relative)")
