"""The guide's services: producer API, storage, search, vectors, embeddings, cache, health, resilience."""
