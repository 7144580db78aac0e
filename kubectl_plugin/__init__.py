"""`kubectl nodeport-guard`: a client tool for people (explain, ports, status).

It imports only the contract package and the Kubernetes client, so it can be installed on its own.
"""
