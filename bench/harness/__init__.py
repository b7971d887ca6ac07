"""The parts of ``bench/run.py``: targets, processes, load generator, workloads, report."""
