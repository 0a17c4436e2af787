"""Tests of the edge agent; they run real brokers, TSDBs and protocol servers on loopback."""
