"""Unit tests run on one thread, as the notebooks do (see course_code.setup)."""

import torch

torch.set_num_threads(1)
