import os
import sys

# One BLAS thread: the front-end's small matrix products run 3x slower when
# OpenBLAS spreads them over cores that the interpreter and the rest of the
# recorder also use. Set before numpy is imported; an explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


# Freed memory stays in the heap for the front-end's few-MB temporaries (page faults otherwise cost it 25% of
# its time) and large blocks (MQTT bundles) go back to the system at once: see edge/heap.py. Before numpy.
from edge.heap import configure  # noqa: E402

configure()

from edge.cli import main  # noqa: E402

sys.exit(main())
