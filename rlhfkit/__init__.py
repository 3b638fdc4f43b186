"""rlhfkit: LLM post-training with human feedback, proven on a known ground truth.

Importing the package is cheap: heavy libraries (transformers, accelerate, peft) are imported by
the modules that need them, never here.
"""

__version__ = "0.1.0"
