"""Running a plan: validate it before any work (validate.py), find or build its steps with a
runner and rebuild what was damaged (execute.py), and what a run gives (result.py)."""
