import os
import sys

# Data preparation makes no BLAS call, and OpenBLAS's idle threads, started with numpy, would
# spin on the cores the workers encode on (a tenth of a CPU second at every start).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli import main  # noqa: E402  (numpy reads the variable when it is first imported)

if __name__ == "__main__":
    sys.exit(main())
