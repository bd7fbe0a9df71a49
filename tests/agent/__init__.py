"""Tests of the agent: caches, peers, servers and the process."""
