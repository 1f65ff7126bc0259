"""The workshop of capture-worker: what develops and measures the worker, never part of it.

The local stack (`stack up|down|status|env`), the benchmarks (`bench`, `bench-db`), the demo,
and the synthetic and poison command generators. This package may import `worker`; `worker`
never imports it: its commands reach the `capture-worker` CLI through the entry point group
`capture_worker.cli` (see `devkit.cli.register`).
"""
