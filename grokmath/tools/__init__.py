"""Tools around the package: the benchmark, its baseline model, the phase-change gallery."""
