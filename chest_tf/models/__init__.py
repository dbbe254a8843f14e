"""Model zoo: ResNet, DenseNet and ViT families behind one open registry.

    from chest_tf.models.registry import build_model, ARCHS
    model = build_model("resnet18", input_shape=(28, 28, 1), num_classes=14)   # logits
    build_model("vit", ...)                                                    # alias: vit_small

Modules: ``registry`` (ARCHS, families and aliases, ``build_model``, ``last_conv_layer_name``),
``resnet``, ``densenet``, ``vit`` (fused attention; ``vit_with_attention`` / ``vit_attention_model`` for rollout), ``layers`` (the custom
layers, BatchNorm), ``transfer`` (ImageNet initialisation), ``flops`` (``estimate_flops``),
``bench`` (``python -m chest_tf.models bench``). Keras only: no TensorFlow import anywhere here.

This file imports nothing, so that ``python -m chest_tf.models`` can quiet TensorFlow before
Keras loads it (runpy imports a package before its ``__main__``).
"""
