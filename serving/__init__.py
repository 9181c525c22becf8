"""retina-xai's TF-Serving-compatible model server and its client.

Importing the package routes any later `import tensorflow` through `components.common.quiet` (no C++
start-up lines on the terminal).
"""

from components.common import quiet as _quiet

_quiet.install()
