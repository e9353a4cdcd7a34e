"""Whether this machine has the devices a run's config asks for, checked before any work.

Lightning finds a missing GPU only while it builds the trainer, after the run has read its
checkpoint and data, and says "No supported gpu backend found!", naming neither the key
that asked for one nor the way out. A solo-learn recipe asks for a GPU
(``accelerator: gpu``) even on a laptop.
"""

from __future__ import annotations

from mile_ssl.config.training import TrainerConfig

GPU_BACKENDS = {"gpu": ("cuda", "mps"), "cuda": ("cuda",), "mps": ("mps",)}
"""Lightning accelerator name -> the torch backends that provide it."""


def backend_available(backend: str) -> bool:
    """Whether torch can use ``backend`` (``cuda`` or ``mps``) on this machine."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    accelerator = CUDAAccelerator if backend == "cuda" else MPSAccelerator
    return bool(accelerator.is_available())


def check_accelerator(trainer: TrainerConfig) -> None:
    """Refuse a GPU accelerator on a machine without a GPU, naming the key and the fix.

    Raises:
        ValueError: If ``trainer.accelerator`` asks for a GPU backend torch cannot use.
    """
    name = str(trainer.accelerator).lower()
    backends = GPU_BACKENDS.get(name)
    if backends is None or any(backend_available(backend) for backend in backends):
        return
    device = "GPU" if name == "gpu" else f"{name.upper()} device"
    raise ValueError(
        f"config key 'trainer.accelerator' is {trainer.accelerator!r} (from the command line, "
        f"a preset or a solo-learn recipe's 'accelerator'), but torch finds no {device} on "
        "this machine; set trainer.accelerator=cpu, or trainer.accelerator=auto to use a "
        "GPU where there is one"
    )
