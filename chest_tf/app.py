"""``python -m chest_tf.app``: the command is ``chest_tf.cli.app`` (this file only starts it)."""
from chest_tf.console import launch

if __name__ == "__main__":
    raise SystemExit(launch("chest_tf.cli.app"))
