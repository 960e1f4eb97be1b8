"""SimFeatUp (JBU-One): the module, its per-pixel kernels and the numba functions that apply them."""
