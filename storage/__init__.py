"""The tiers' memory: page pools, transfers between them, remote stores and the page codec.

This package knows pages, tensors, keys and bytes; it imports neither `radixkv` nor `engine`.
"""

from storage.allocator import OutOfPages, PageAllocator
from storage.codec import PageFormatError, decode_page, encode_page
from storage.file_store import FileStore
from storage.layout import KVLayout
from storage.open_store import open_remote_tier, open_store
from storage.pools import DevicePool, HostPool
from storage.remote import RemoteStats, RemoteStore
from storage.transfer import copy_device_to_host, copy_host_to_device

__all__ = [
    "DevicePool",
    "FileStore",
    "HostPool",
    "KVLayout",
    "OutOfPages",
    "PageAllocator",
    "PageFormatError",
    "RemoteStats",
    "RemoteStore",
    "copy_device_to_host",
    "copy_host_to_device",
    "decode_page",
    "encode_page",
    "open_remote_tier",
    "open_store",
]
