"""Celery workers: the app, thin tasks, and the model and Milvus facades they use."""
