//! NumPy `.npy` arrays and `.npz` archives (members `x` and `y`).
