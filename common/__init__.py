"""Shared, torch-free code: settings, domain errors, job records and request models."""
