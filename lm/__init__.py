"""lm: a small, readable transformer language-model trainer."""
