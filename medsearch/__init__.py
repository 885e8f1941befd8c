"""medsearch: semantic search for medical text with Matryoshka embeddings and tiered FAISS indexes.

    from medsearch import Encoder, Searcher, build_index, open_index, upsert

    build_index("corpus/", "indexes/default", Encoder())
    upsert("indexes/default", "new-docs/", Encoder())  # add new documents, replace changed ones
    searcher = Searcher.open("indexes/default")
    searcher.search(["early signs of type 2 diabetes"], tier="fast", k=10)
"""

from medsearch.encoding.encoder import Encoder
from medsearch.errors import BadInputError, MedsearchError, MismatchError, NotFoundError
from medsearch.index.build import build_index
from medsearch.index.folder import Index, open_index
from medsearch.index.writes import compact, delete, sync, upsert
from medsearch.retrieval.hits import QueryResult
from medsearch.retrieval.options import SearchOptions
from medsearch.retrieval.search import Searcher
from medsearch.version import __version__

__all__ = [
    "BadInputError",
    "Encoder",
    "Index",
    "MedsearchError",
    "MismatchError",
    "NotFoundError",
    "QueryResult",
    "SearchOptions",
    "Searcher",
    "__version__",
    "build_index",
    "compact",
    "delete",
    "open_index",
    "sync",
    "upsert",
]
