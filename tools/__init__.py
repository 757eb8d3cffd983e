"""Long runs and helpers as root: run them from the repository root as modules,
`python -m tools.NAME` (they import the test helpers as the `tests` package)."""
