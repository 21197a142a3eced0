"""The benchmark harness behind run.py, one module per job (see run.py)."""
