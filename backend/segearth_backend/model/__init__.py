"""The model: named presets, resolving a configuration to files, loading CLIP, its towers, the weights."""
