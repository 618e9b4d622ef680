"""``onnxq sweep``: models x recipes x EPs as one resumable, content-cached job, serially, on a local process
pool or on Ray.

- :mod:`~onnxq.sweep.spec` reads and checks the spec; :mod:`~onnxq.sweep.plan` makes the cells and tasks;
- :mod:`~onnxq.sweep.cache` keys every task by content and keeps finished ones in OUT;
- :mod:`~onnxq.sweep.scheduler` runs tasks on the nodes of an executor (:mod:`~onnxq.sweep.executors`,
  :mod:`~onnxq.sweep.ray_executor`), which run :func:`onnxq.sweep.tasks.run_task` in their workers;
- :mod:`~onnxq.sweep.results`, :mod:`~onnxq.sweep.report`, :mod:`~onnxq.sweep.render` and
  :mod:`~onnxq.sweep.pareto` turn the results into the report.

Ray is imported only by :mod:`~onnxq.sweep.ray_executor`, when a sweep asks for it.
"""

from onnxq.sweep.runner import SweepOutcome, make_executor, run_sweep
from onnxq.sweep.spec import SweepSpec, load_spec, spec_from_mapping

__all__ = ["SweepOutcome", "SweepSpec", "load_spec", "make_executor", "run_sweep", "spec_from_mapping"]
