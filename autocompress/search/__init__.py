"""The search: the study, its space, the controller loop, throughput accounting."""

from __future__ import annotations

from autocompress.search.controller import Search, default_run_dir, load_resume
from autocompress.search.throughput import describe

__all__ = ['Search', 'default_run_dir', 'describe', 'load_resume']
