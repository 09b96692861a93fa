"""Declarative family descriptions, one JSON file per architecture family (see ``family.py``)."""
