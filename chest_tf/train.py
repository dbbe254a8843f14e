"""``python -m chest_tf.train``: the command is ``chest_tf.cli.train`` (this file only starts it)."""
from chest_tf.console import launch

if __name__ == "__main__":
    raise SystemExit(launch("chest_tf.cli.train"))
