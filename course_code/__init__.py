"""Companion package of the course *Variational Autoencoders, Exactly*.

Chapters import the modules by name (``from course_code import objectives, plots``)
and start with :func:`setup`, which makes every run of a notebook print the same numbers.
"""

import os
import random

__version__ = "0.1.0"

__all__ = ["__version__", "glue", "setup"]


def setup(seed: int = 0, *, dtype=None, threads: int | None = None, quiet: bool = False) -> None:
    """Seed every generator, choose the floating-point type, switch on deterministic algorithms,
    set the plot style and print versions.

    Call it once at the top of a notebook. ``dtype`` becomes torch's default floating-point type
    (default: ``torch.float64``): the data, the models and the tractable models follow it. In
    float64, the rounding differences between CPU kernels (which vary from processor to processor)
    stay far below the printed digits even after hundreds of training steps; in float32 they can
    reach the third decimal. ``threads`` fixes the thread count of torch and of numpy's BLAS
    (default: 1, or ``COURSE_THREADS``): the course's small networks gain nothing from more, one
    thread sums floating-point numbers in the same order on every machine, and a busy machine
    does not slow it down.
    """
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    dtype = torch.float64 if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"setup(dtype=...) must be torch.float64 (the notebooks) or torch.float32, got {dtype!r}")
    threads = threads or int(os.environ.get("COURSE_THREADS", "1"))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's BLAS and OpenMP get the same thread count
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    try:
        from course_code import plots

        plots.use_style()
    except ImportError:  # matplotlib missing: the math still works
        pass
    if not quiet:
        print(f"course_code {__version__} · torch {torch.__version__} · {str(dtype).removeprefix('torch.')} · seed {seed}")


def glue(name: str, value) -> None:
    """Record ``value``'s text under ``name`` so the book's prose can quote it with {glue:text}`name`.

    It writes the same hidden notebook output as ``myst_nb.glue(name, value, display=False)``, so
    the rendered page shows the number the notebook computed, without needing myst-nb at run time.
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    prefix = "application/papermill.record/"
    bundle, metadata = format_display_data(value)
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    display({prefix + key: data for key, data in bundle.items()}, raw=True, metadata=metadata)
