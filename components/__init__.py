"""retina-xai's steps and their shared library (`components.common`).

Importing the package routes any later `import tensorflow` through `components.common.quiet`, so that
TensorFlow's C++ start-up lines never reach a user's terminal from a step, a KFP component or `retina`.
"""

from components.common import quiet as _quiet

_quiet.install()
