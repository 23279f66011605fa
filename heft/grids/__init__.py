"""Grids of pipeline runs: specs and their cells (spec.py), one DAG of the cells' unique steps
(plan.py), the report with its plots (report.py, plots.py), and diagnostics of trained cells
(diagnostics.py: intruder dimensions, flips)."""
