"""Model families. Each module imports torch and transformers; nothing imports them until a model loads."""
