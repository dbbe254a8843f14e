"""``python -m chest_tf.models``: the command is ``chest_tf.cli.models`` (this file only starts it)."""
from chest_tf.console import launch

if __name__ == "__main__":
    raise SystemExit(launch("chest_tf.cli.models"))
