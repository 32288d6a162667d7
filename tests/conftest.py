"""Test-wide settings.

One torch thread: the tests use tiny tensors, where a second OpenMP thread only
adds synchronisation, and on a shared or loaded 2-core machine spinning OpenMP
threads slow tiny ops down by orders of magnitude.
"""

import torch

torch.set_num_threads(1)
