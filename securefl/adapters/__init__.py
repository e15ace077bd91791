"""Converters between ML frameworks' models and securefl's named arrays. Each imports its framework lazily."""
