"""Hand a ppdeploy model to another serving engine: `triton` writes a Triton Inference Server model repository."""
