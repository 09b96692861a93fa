"""Class labels of rows to the model's class ids, through the model config's ``id2label``/``label2id``.

The names come from the model, never from the data: a row's label ``"sport"`` is whatever id the
classifier's head calls ``sport``. Integer labels (or folder names that are integers) are ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from theseus_ops.errors import InputError


def label_table(config) -> dict[str, int]:
    """Label name -> id from ``label2id``, completed by ``id2label`` (either may be the one saved)."""
    table: dict[str, int] = {}
    for name, idx in (getattr(config, "label2id", None) or {}).items():
        table[str(name)] = int(idx)
    for idx, name in (getattr(config, "id2label", None) or {}).items():
        table.setdefault(str(name), int(idx))
    return table


def num_labels(config) -> int:
    return int(getattr(config, "num_labels", None) or len(getattr(config, "id2label", None) or {}) or 0)


def to_ids(labels: Sequence[str | int], config, where: str) -> list[int]:
    """Every label as a class id of the model; InputError naming the first unknown label."""
    table = label_table(config)
    lowered = {k.lower(): v for k, v in table.items()}
    count = num_labels(config)
    ids = []
    for label in labels:
        if isinstance(label, int) and not isinstance(label, bool):
            idx = label
        elif label in table:
            idx = table[label]
        elif label.lower() in lowered:
            idx = lowered[label.lower()]
        elif label.lstrip("-").isdigit():
            idx = int(label)
        else:
            raise InputError(f"{where}: label {label!r} is not one of the model's labels "
                             f"({', '.join(sorted(table, key=table.get)) or 'none'})")
        if not 0 <= idx < count:
            raise InputError(f"{where}: label id {idx} is outside the model's {count} classes")
        ids.append(idx)
    return ids
