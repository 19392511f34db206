"""Workload plugins: one package per model; `pytest workloads` collects their tests."""
