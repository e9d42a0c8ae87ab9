"""``irae benchmark``: quality, speed and invertibility figures, as plain functions returning dicts.

Every result is a JSON-ready dict with a ``schema`` tag, the ``settings`` that
produced it and the ``versions`` of everything that could change it, so a
number in a README can be traced to one rerunnable command.

* :func:`.quality.quality` degrades clean images with fixed seeds (the same
  functions and seeds as ``irae degrade``) or reads a ``degrade`` manifest,
  restores them through :class:`~irae_cli.inference.Restorer` (the ``irae
  restore`` path) and scores every model with
  :func:`irae_cli.metrics.compute_all` -- the paper conventions, each metric
  key naming its own.  The degraded input is scored as its own row
  ("input"), and the task's classical methods are scored too, so a model is
  always seen next to doing nothing and doing the obvious.
* :func:`.speed.speed` times the model alone (warm-up, device
  synchronisation, median and p90 over repeats) or a folder end to end, I/O
  included.
* :func:`.invertibility.invertibility` measures how exactly
  ``inverse(forward(y))`` returns ``y`` on real images at a chosen dtype.

Modules: ``common`` (schemas, environment, JSON, report paths), ``models``
(the models under test), ``units`` (what is scored: images and their
degraded versions), ``quality``, ``speed``, ``invertibility``, ``tables``
(the screen) and ``sheet`` (the comparison PNG).  Nothing is imported here,
so ``import irae_cli.benchmark.tables`` does not pull in torch's models.
"""
