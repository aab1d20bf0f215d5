"""atwu-fast: kernel-accelerated token-weighted LLM unlearning."""

__version__ = "0.1.0"
