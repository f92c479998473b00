"""Benchmarks: offline model matrix (offline.py), OCR pipeline vs reference tools (ocr.py, peers.py), open-loop
HTTP load (load.py), the serving benchmarks (serving.py), the precision benchmark (precision.py), statistics
(stats.py), reports and plots (report.py), the `--all` suite (suite.py)."""
