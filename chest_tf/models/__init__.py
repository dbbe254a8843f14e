"""Model zoo: ResNet, DenseNet and ViT families behind one registry (see registry.py)."""
