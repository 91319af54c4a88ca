"""One module per family of upload formats; `ingestion.parsing` holds the registry that picks one.

Third-party parsers (BeautifulSoup, pypdf, python-docx) are imported inside the functions that use
them, so importing this package (and `ingestion.parsing`, which the API imports) stays cheap.
"""
