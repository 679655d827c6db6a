"""Benchmarks: one module per benchmark, each runnable as `python -m bench.<name>` (with
`--quick` for the small version run by the test suite) and printing one JSON object with
its figures, the baseline measured in the same run and the ratio. Shared helpers live in
`bench.common`."""
