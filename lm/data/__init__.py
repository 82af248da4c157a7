"""The data side: corpora and token windows, tokenizers, the generated seq2seq tasks, and where their
tokens sit (positions, padding)."""
