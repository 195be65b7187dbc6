"""Model loading, the batched KV-cached runner and the engine loop that drives programs."""
