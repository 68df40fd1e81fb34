"""The SGLang HiCache storage adapter's former path, kept so that existing SGLang launch configs
(`"module_path": "radixkv.sglang_storage"`) still load it; it lives in `storage.sglang_storage`."""

from storage.sglang_storage import RadixKVStorage

__all__ = ["RadixKVStorage"]
