"""Asyncio primitives that know nothing about clusters, etcd or Kubernetes."""
