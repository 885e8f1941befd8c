"""The index folder: its format (file names, manifest, checksums), the document store, committed
generations and their one writer, BM25 and its languages, filters, build, writes, snapshots, and
the backends where the vectors live."""
