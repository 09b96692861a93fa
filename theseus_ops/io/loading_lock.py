"""One process-wide lock around building transformers models.

Why: ``from_pretrained`` switches weight tying and initialisation off by swapping class attributes of
``PreTrainedModel`` (``tie_weights``, ``init_weights``) for no-ops, and puts back what it found when it
is done. Two threads loading at once can each find the other's no-op and "restore" it, and the process
is left with tying switched off for good: every tied model built afterwards (GPT-2, tied Llama, Gemma)
has an untied head, or one left on the meta device. Concurrent registrations in one process (the
Python API from a thread pool) did exactly that. So every ``from_pretrained`` and pipeline build on
the product's paths (``io.models``, ``evaluation.loading``, the catalog's registration) holds this
lock; transformers' own loading is not thread-safe. The demo's fixture builders run in one thread and
do not take it.
"""

from __future__ import annotations

import threading

MODEL_BUILDING = threading.RLock()
"""Held while transformers loads a model (``from_pretrained``, ``pipeline``)."""
