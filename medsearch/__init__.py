"""medsearch: semantic search for medical text with Matryoshka embeddings and tiered FAISS indexes.

    from medsearch import Encoder, Searcher, build_index, open_index

    build_index("corpus/", "indexes/default", Encoder())
    searcher = Searcher.open("indexes/default")
    searcher.search(["early signs of type 2 diabetes"], tier="fast", k=10)
"""

__version__ = "0.1.0"

from medsearch.encoder import Encoder  # noqa: E402
from medsearch.errors import BadInputError, MedsearchError, MismatchError, NotFoundError  # noqa: E402
from medsearch.index import Index, build_index, open_index  # noqa: E402
from medsearch.search import QueryResult, Searcher  # noqa: E402

__all__ = [
    "BadInputError",
    "Encoder",
    "Index",
    "MedsearchError",
    "MismatchError",
    "NotFoundError",
    "QueryResult",
    "Searcher",
    "__version__",
    "build_index",
    "open_index",
]
