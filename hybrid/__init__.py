"""Hybrid LLM Trainer: git history → training data → memory-augmented language models, on Ray."""

__version__ = "0.1.0"
