"""clustermesh: the shared core of a Cilium Cluster Mesh compatible control plane.

Wire records and their codec, the etcd key schema, identity numbering, the etcd client and stores, TLS material,
configuration, Kubernetes sources and the operator CLI. The apiserver and agent packages build on it; it imports
neither.
"""

__version__ = "0.1.0"
