"""Objects named by ``"module:attribute"`` strings, imported only when asked for.

A lower layer names something that lives in a higher one (the training loop names the torch
backend and the report writer) through such a string: the name is data, so the lower layer
does not import the higher one and the import graph keeps pointing downward
(tests/test_architecture.py checks it).
"""

from __future__ import annotations

import importlib


def load(spec: str):
    """The object ``spec`` (``"package.module:attribute"``) names, importing its module."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not a 'module:attribute' name")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {attribute!r} (named by {spec!r})") from None
