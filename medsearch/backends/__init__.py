"""Where the vectors of a tier live and are searched. `faiss` (the index folder's own files) is
the one backend today; a second one (Qdrant) is meant to fit the same small surface:
build, load, save, add, search with the allowed rows, and the stored vectors of some rows."""
