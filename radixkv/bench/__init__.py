"""Benchmark harness: `python -m radixkv.bench trace ...` replays production traces."""
