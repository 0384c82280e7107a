"""The operator's command line: ``wft run``, ``wft enqueue``, ``wft status``, ``wft dlq`` ..."""
