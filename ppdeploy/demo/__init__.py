"""Small real models ppdeploy can create on any machine, offline, for demos and tests."""
