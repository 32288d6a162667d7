"""From run directories to results: gather.py writes SWEEP/results/*.parquet (see its docstring)."""
