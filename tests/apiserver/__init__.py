"""Tests of the apiserver: conversions, the identity allocator, the publisher against real etcd, the process."""
