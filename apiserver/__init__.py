"""The clustermesh apiserver: publishes one cluster's nodes, services, identities and endpoints into its etcd.

Run it as `clustermesh-apiserver` or `python -m apiserver` (apiserver.main). Nothing imports this package:
other components talk to a running apiserver over etcd and gRPC.
"""
