"""Synthetic labelled data for detection: PCB-defect boards and document pages with known regions."""
