"""The test suite; its helpers (tests.tcpscript, tests.fuzzworld, tests.attacks)
are importable as this package from the repository root, e.g. by tools/."""
