"""The engine: class lists and arrays in, windows through the model, labels and probabilities out."""
