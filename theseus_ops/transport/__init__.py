"""The transport engine: architecture specs, statistics, maps, transport rules and methods.

Takes tensors and ``torch.nn.Module`` objects, returns tensors and reports. It never reads
files or talks to MLflow; :mod:`theseus_ops.io`, :mod:`theseus_ops.pipeline` and :mod:`theseus_ops.api` do
that.
"""
