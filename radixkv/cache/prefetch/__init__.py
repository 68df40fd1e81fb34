"""Pages brought up a tier before the request that reads them runs.

remote_reads.py  remote -> host reads: discovery, prefetch for queued requests, completions
prefetcher.py    ahead-of-need promotion: sessions predicted to return, expected prefixes
hot_prefixes.py  the shared record of the most-read prefixes, to warm a new process's host
"""
