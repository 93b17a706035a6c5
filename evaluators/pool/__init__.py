"""Pool files: inspection and validation from headers, bounds, staging for transformers, tokenizer checks."""
