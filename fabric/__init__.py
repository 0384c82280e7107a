"""The task fabric: everything between a producer and a task body, and what every layer above shares.

- the message contracts of every queue (:mod:`fabric.contracts`) and the producer that validates and
  sends them (:mod:`fabric.producer`, ``get_message_queue()``);
- what travels and what is kept beside the broker: bulk envelopes (:mod:`fabric.envelopes`), statuses of
  enveloped messages (:mod:`fabric.statuses`), delivery counts (:mod:`fabric.deliveries`), dead letters
  (:mod:`fabric.dead_letters`), the result backend (:mod:`fabric.result_backend`);
- the Celery configuration (:mod:`fabric.celery_config`) and the workers' lost-worker leases
  (:mod:`fabric.leases`);
- the error tree (:mod:`fabric.errors`), the per-process registry of clients (:mod:`fabric.registry`), the
  Redis clients (:mod:`fabric.redis_clients`) and every Redis key name (:mod:`fabric.keys`).

It imports nothing of the project but :mod:`config`; ``docs/architecture.md`` draws where it sits.
"""
