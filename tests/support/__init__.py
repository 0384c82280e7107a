"""Test helpers: real servers on free ports, worker processes, polling."""
