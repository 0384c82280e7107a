"""The services of the integration guide (docs/integration-guide.md; "the guide" in this code): storage,
search, vectors, embeddings, cache, health, resilience, metrics, analytics and structured logs. Each backend
is one module behind a small contract (``base.py``), built per process (:mod:`fabric.registry`).

The producer API the guide calls ``get_message_queue()`` is part of the fabric (:mod:`fabric.producer`);
``services.message_queue`` keeps the guide's import path for it."""
