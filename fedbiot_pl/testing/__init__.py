"""Test-only machinery (fault injection) that tests and benchmarks attach; production code never imports it."""
