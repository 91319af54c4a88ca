"""Parsing and chunking of documents; plain functions the ingest tasks call."""
