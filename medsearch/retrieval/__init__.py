"""Answering queries: the search options, the Searcher (tiers, modes, hydration), fusion, the
re-rank stage and citations."""
