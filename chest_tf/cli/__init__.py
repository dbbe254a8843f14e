"""The commands: one module per ``python -m chest_tf.X``. Each parses its flags and calls the
library; none imports another command, and the library never imports a command (enforced by
tests/test_import_rules.py). Each is started by a two-line entry point (``chest_tf/X.py`` or
``chest_tf/X/__main__.py``) through ``chest_tf.console.launch``, which quiets TensorFlow before
the command's imports run."""
