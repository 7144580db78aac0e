"""nodeport-guard benchmarks (`make bench`, `python -m bench`)."""
