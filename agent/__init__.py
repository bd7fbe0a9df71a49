"""The clustermesh agent: one per node; watches every peer cluster's etcd, caches, and serves the result."""
