"""Reports: markdown tables, results.csv and figures built from finished experiment rows."""

from hpt.report.build import build_report, read_rows

__all__ = ["build_report", "read_rows"]
