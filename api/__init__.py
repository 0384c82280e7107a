"""The HTTP API (FastAPI): the guide's endpoints plus workflows, executions, queues, dead letters and health.

Build it with :func:`api.app.create_app`; serve it with ``python -m api``.
"""
