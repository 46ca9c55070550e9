"""Retrieval over documents and memories: loaders, chunking, BM25 + dense hybrid search."""
