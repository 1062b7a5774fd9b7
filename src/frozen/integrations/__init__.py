"""Integrations with training frameworks, imported on demand.

* :mod:`frozen.integrations.hf` — a Hugging Face ``transformers`` ``TrainerCallback``
  (needs the ``hf`` extra).
* :mod:`frozen.integrations.lightning` — a PyTorch Lightning ``Callback`` (needs the
  ``lightning`` extra).
* :mod:`frozen.integrations.accelerate` — ``save_state`` / ``load_state`` hooks that keep
  the freeze state and the optimizer layout (needs ``accelerate``, in the ``hf`` extra).

``import frozen`` (and ``import frozen.integrations``) imports neither framework;
only importing the submodule does.
"""

__all__: list[str] = []
