"""theseus-ops: move fine-tuned task vectors to a new base model release without retraining.

The transport engine lives in :mod:`theseus_ops.transport` (torch only); files and models in
:mod:`theseus_ops.io`; the same work in memory, on objects a caller holds, in
:mod:`theseus_ops.pipeline`; the user-facing Python API in :mod:`theseus_ops.api` (its file
adapters), mirrored by the ``theseus-ops`` CLI.
"""

__version__ = "0.1.0"
