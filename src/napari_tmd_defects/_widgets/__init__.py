"""napari layer of the plugin: dock widgets, reader, writer and sample data (no science here).

Triton, a dependency of Linux torch builds used only by ``torch.compile``, ships its own
LLVM; importing it after an OpenGL context backed by Mesa's llvmpipe exists (napari's
canvas on machines without a GPU driver for OpenGL, remote desktops, ``xvfb``) kills the
process with a segmentation fault. ``torchvision`` imports it through ``torch._dynamo``
as soon as the networks load. The plugin runs torch eagerly and never needs Triton, so
unless Triton is already loaded it is hidden from torch here, before any torch import
by the plugin; set ``TMD_DEFECTS_ALLOW_TRITON=1`` to keep it visible.
"""

import os
import sys

if "triton" not in sys.modules and not os.environ.get("TMD_DEFECTS_ALLOW_TRITON"):
    sys.modules["triton"] = None  # `import triton` now raises ImportError: torch treats it as absent
