"""Tests against real servers: etcd processes, gRPC and DNS servers on loopback."""
