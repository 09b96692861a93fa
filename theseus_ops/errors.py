"""One error hierarchy for the whole library, in two branches that say what to do about an error.

* :class:`InputError`: the input (files, options, the model pair, the catalog's content) cannot
  be used as given. It fails the same way on every retry, so it fails at once: the CLI prints one
  line and exits with code 2; an Airflow step fails for good (``AirflowFailException``).
* :class:`ServiceError`: a remote service (MLflow, S3) failed in a way that a later attempt may
  cure, after theseus-ops's own bounded retries were spent. The CLI prints one line and exits
  with code 3; an Airflow step lets it propagate, so Airflow retries the task with backoff.

Every message must name the problem and, where there is one, the fix. ``exit_code`` is the CLI's
exit status for the class.
"""

from __future__ import annotations


class TheseusError(Exception):
    """Base class of every error theseus-ops raises on purpose."""

    exit_code = 2


class InputError(TheseusError):
    """The user's input (files, options, model pair) cannot be used as given: exit 2, never retried."""

    exit_code = 2


class ServiceError(TheseusError):
    """A remote service failed after every bounded retry; a later attempt may succeed: exit 3, retried."""

    exit_code = 3


class UnsupportedArchitectureError(InputError):
    """The model's type has no architecture spec (transport/architectures/*.json)."""


class NotApplicableError(InputError):
    """A method's declared requirements rule it out for these inputs.

    Raised only by the capability checks (identical shapes, calibration data, labels, LoRA support; all
    before statistics or maps, gradfix's labels check once the calibration file is read), so
    the workflow can record the method as "not applicable" to a pair and go on with the others. Any
    other error from a method is a defect of the input and stays an error: a corrupt task vector must
    fail the task, not quietly drop every method and keep the base.
    """


class PartialTransportError(InputError):
    """Some task-vector parameters could not be transported and --allow-partial was not given."""
