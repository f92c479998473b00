"""`ppdeploy quickstart` (quickstart.py) and small real models ppdeploy can create on any machine, offline, for demos
and tests (shapes_classifier.py)."""
