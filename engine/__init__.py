"""The serving engine: models, weight loading, attention backends, the scheduler, the model
runner, sampling, the engine thread and the HTTP app (`engine.http`).

`engine` may import `radixkv.cache` and `storage`; neither imports `engine`. The entry points in
`radixkv/` (Engine, serve, bench) sit above it.
"""
