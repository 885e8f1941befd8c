"""medsearch: semantic search for medical text with Matryoshka embeddings and tiered FAISS indexes."""

__version__ = "0.1.0"

from medsearch.errors import MedsearchError

__all__ = ["MedsearchError", "__version__"]
