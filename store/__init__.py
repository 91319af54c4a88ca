"""The Milvus facade, shared by the workers (writes, search) and the API (reads for collection pages)."""
