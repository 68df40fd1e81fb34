"""The serving engine: models, weight loading, attention backends, and (next) the scheduler.

`engine` may import `radixkv` and `storage`; neither imports `engine`.
"""
