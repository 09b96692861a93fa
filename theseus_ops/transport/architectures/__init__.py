"""Architecture specs, one JSON file per architecture family (loaded by ``transport/architecture.py``)."""
