"""The model: the hand-written Transformer, its hook points, the activation cache and the weight views."""
