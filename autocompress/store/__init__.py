"""Run-folder files: atomic writes, safe (pickle-free) model formats, content hashes."""

from __future__ import annotations

from autocompress.store.run_folder import RunFolder, atomic_write
from autocompress.store.safe_io import NotRebuildable, TRIAL_MODULE, file_hashes, load_exported, load_module, module_files, save_module, sha256_file, verify_files

__all__ = ['NotRebuildable', 'RunFolder', 'TRIAL_MODULE', 'atomic_write', 'file_hashes', 'load_exported', 'load_module', 'module_files', 'save_module', 'sha256_file', 'verify_files']
