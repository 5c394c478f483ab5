"""Candidate corpora: documents an app could add to its retrieval index.

An app registers a folder of Markdown/HTML/text files or a JSONL of documents
(`refinery corpus add`, `POST /v1/apps/{app_id}/corpus`). `chunking.py` reads and chunks them
(pure); `store.py` embeds the chunks with the pipeline's embedding model, stores them with their
vectors in `corpus_chunks` and serves a FAISS index per app and corpus version, which the
proposer searches for documents the app's retriever never returned. Owns the corpora and
corpus_chunks tables; may not touch proposals.
"""
