"""The control-plane build lives in localcluster.build; this name keeps `python -m tests.controlplane.build` working."""

from localcluster.build import (
    BuildError,
    ControlPlaneBinaries,
    cache_root,
    ensure_binaries,
    expected_binaries,
    main,
    staging_replaces,
)

__all__ = [
    "BuildError",
    "ControlPlaneBinaries",
    "cache_root",
    "ensure_binaries",
    "expected_binaries",
    "main",
    "staging_replaces",
]

if __name__ == "__main__":
    raise SystemExit(main())
