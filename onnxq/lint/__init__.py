"""``onnxq lint``: check a QDQ model against a target's rules (TensorRT, ONNX Runtime's CPU EP).

The rules are data (``rules.py``, ``tensorrt_rules.py``, ``ort_rules.py``): an id, a severity, a one-line
statement, a fix and a check that names the offending nodes. ``check.py`` runs a target's rule set over every
graph of a model; ``render.py`` prints the result as a table or as the ``onnxq.lint/1`` JSON document.
"""

from onnxq.lint.check import RULESETS, LintReport, lint_file, lint_model

__all__ = ["RULESETS", "LintReport", "lint_file", "lint_model"]
