"""Celery tasks, one module per queue. The app lives in :mod:`tasks.app`."""
