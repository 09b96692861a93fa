"""An offline, deterministic model family and an evaluation harness for theseus-ops.

Nothing can be downloaded where this project is developed and tested, yet users need to see
transport work on real models before trusting it. This package builds its own small family of
byte-level Llama models (a source release, grown/shuffled/continued/independent targets, and
fine-tuned task vectors) from the Python standard library's sources plus synthetic skills, and
evaluates every transport method on it honestly: α is chosen on val, test is reported.
"""
