"""The three tiers a page can live in, by index: device (GPU memory), host (DRAM), remote (a
store shared by many processes)."""

DEVICE, HOST, REMOTE = 0, 1, 2
TIER_NAMES = ("device", "host", "remote")
