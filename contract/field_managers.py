"""The field manager each of our writers names on every write (pure data).

GitOps tools tell our fields from the user's by these names (docs/operations.md, "GitOps"):
Argo CD `ignoreDifferences[].managedFieldsManagers`, Flux / kubectl diff by managedFields.
"""

from __future__ import annotations

from typing import Final

RECONCILER: Final = "nodeport-guard-reconciler"  # policy annotations, its Lease, in-force Events and marker
ENFORCER: Final = "nodeport-guard-enforcer"  # per-node status Leases, the enforcer's Events
CERTS: Final = "nodeport-guard-certs"  # `python -m certs install`: Secrets, ConfigMap, caBundle

ALL: Final = (RECONCILER, ENFORCER, CERTS)
