"""Suite-wide settings."""
import os

import torch

# The CLI adapts torch's thread count to the machine's load (threads.py). Tests compare runs bit for
# bit (resume, infer twice, subprocess vs in-process), and a thread count that changes between two
# runs changes float reductions, so the suite fixes the count torch starts with (subprocesses inherit it).
os.environ.setdefault("HVC_THREADS", str(torch.get_num_threads()))
