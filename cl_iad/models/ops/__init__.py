"""Tensor operations shared by the frozen-feature models: coreset selection, k-NN search, Gaussian blur."""
