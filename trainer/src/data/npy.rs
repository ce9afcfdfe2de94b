//! NumPy `.npy` arrays and `.npz` archives (members `x` and `y`).

use std::path::Path;

use super::Dataset;
use crate::error::DataError;

/// A `.npy` pair (stub until the reader lands).
pub fn load_npy_pair(x: &Path, _y: &Path) -> Result<Dataset, DataError> {
    Err(DataError::Invalid(format!(
        "{}: .npy is not read yet",
        x.display()
    )))
}

/// A `.npz` archive (stub until the reader lands).
pub fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    Err(DataError::Invalid(format!(
        "{}: .npz is not read yet",
        path.display()
    )))
}
