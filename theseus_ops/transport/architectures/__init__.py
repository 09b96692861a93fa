"""Architecture specs, one JSON file per architecture (loaded by ``transport/architecture.py``)."""
