"""Adapters that embed radixkv in agent frameworks, each an optional extra."""
