"""Grids and studies on top of the pipeline: grid specs and their cells (grid.py), the grid
report (grid_report.py), study specs and read-back of finished cells (spec.py), the tables
and paired comparisons (tables.py), diagnostics (diagnostics.py), results.md (document.py,
assembled by assemble.py), and tasks derived from local files (derived.py)."""
