"""Real models and data that work offline: the packaged SmolLM2-135M, all-MiniLM-L6-v2, MovieLens-100k, WordNet."""
