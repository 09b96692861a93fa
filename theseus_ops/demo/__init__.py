"""An offline, deterministic model family for theseus-ops, and the commands that score it.

Nothing can be downloaded where this project is developed and tested, yet users need to see
transport work on real models before trusting it. This package builds its own small family of
byte-level Llama models (a source release, grown/shuffled/continued/independent targets, and
fine-tuned task vectors) from the Python standard library's sources plus synthetic skills, and
evaluates every transport method on it honestly: α is chosen on val, test is reported. Scoring
itself is :mod:`theseus_ops.evaluation`; this package is one of its clients.
"""
