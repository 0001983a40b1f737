"""Reading a finished or running run folder: load, show, report, export."""

from __future__ import annotations

from autocompress.results.display import SearchDisplay
from autocompress.results.export import FORMATS, ExportMismatch, export
from autocompress.results.load import LoadedModel, load
from autocompress.results.report import write_report
from autocompress.results.retime import retime
from autocompress.results.show import front_table, parse_quantity, plugins_table

__all__ = ['LoadedModel', 'load', 'ExportMismatch', 'FORMATS', 'SearchDisplay', 'export', 'front_table', 'parse_quantity', 'plugins_table', 'write_report', 'retime']
