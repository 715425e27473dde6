"""`python -m effnetv2_jax.predict --checkpoint DIR image1.jpg ...`: classify image files.

Only the tool's name lives here; its code is effnetv2_jax/predict_cli.py. `effnetv2_jax.predict`
is the function (`effnetv2_jax.inference.predict`), and importing this file as a module would
rebind that package attribute to the module, so an import refuses and says where to look.
"""

import sys

if __name__ != "__main__":
    raise ImportError("effnetv2_jax.predict is the function effnetv2_jax.inference.predict, not "
                      "a module to import; the command line is `python -m effnetv2_jax.predict` "
                      "and its code effnetv2_jax.predict_cli (format_table, main)",
                      name=__name__)

from effnetv2_jax.predict_cli import main  # noqa: E402

sys.exit(main())
