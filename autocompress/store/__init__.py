"""Run-folder files: atomic writes, safe (pickle-free) model formats, content hashes."""

from __future__ import annotations

from autocompress.store.memo import Memo, MemoEntry, content_key, link_or_copy
from autocompress.store.run_folder import RunFolder, atomic_write
from autocompress.store.safe_io import (
    TRIAL_MODULE,
    NotRebuildable,
    file_hashes,
    load_exported,
    load_module,
    module_files,
    save_module,
    sha256_file,
    verify_files,
)

__all__ = ['Memo', 'MemoEntry', 'NotRebuildable', 'RunFolder', 'content_key', 'link_or_copy', 'TRIAL_MODULE', 'atomic_write', 'file_hashes', 'load_exported', 'load_module', 'module_files', 'save_module', 'sha256_file', 'verify_files']
