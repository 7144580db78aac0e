"""Envtest-style local control plane: build, start and stop kube-apiserver + etcd."""
