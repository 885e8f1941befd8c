"""Where an index's vectors live and are searched: `faiss` (the index folder's own files,
faiss.py) or `qdrant` (a Qdrant collection, qdrant.py), chosen by the manifest's `backend`;
base.py holds the one call the search layer makes of either."""
