"""``python -m chest_tf.metrics``: the command is ``chest_tf.cli.metrics`` (this file only starts it);
the metrics themselves are ``chest_tf.evaluation.metrics``."""
from chest_tf.console import launch

if __name__ == "__main__":
    raise SystemExit(launch("chest_tf.cli.metrics"))
