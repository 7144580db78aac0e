"""What the webhook, the enforcers and the kubectl plugin agree on: the contract between them.

- `annotation`: the annotation keys and schema (version, canonical JSON, validation, sign and read)
- `signing`: Ed25519 signing (webhook) and the trusted public keys (enforcer, plugin)
- `composition`: what several policies' parts mean together for one NodePort
- `intervals`: exact address-interval arithmetic behind the composition
- `node_status`: the per-node status Lease an enforcer publishes and the plugin reads

Pure: the standard library and `cryptography` only. Both `webhook/` and `enforcer/` import it;
neither imports the other. See docs/annotation.md.
"""
