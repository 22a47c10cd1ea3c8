"""``mlplab check``: run a learner's own NumPy modules (the course API) against mlplab's and name
the mistake when one is found.

The learner's code runs in a separate process (:mod:`mlplab.check.runner` starts
:mod:`mlplab.check.probe`), which calls it through :class:`mlplab.check.context.Probe`. The
checks per module live in ``check_*.py``; :mod:`mlplab.check.diagnose` matches wrong numbers to
the mistakes of :mod:`mlplab.check.catalogue`; :mod:`mlplab.check.report` prints the outcome.
"""
