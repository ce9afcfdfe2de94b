//! CIFAR-10's binary batches.

use std::path::Path;

use super::Dataset;
use crate::error::DataError;

/// CIFAR-10 batches (stub until the reader lands).
pub fn load_cifar10(path: &Path) -> Result<Dataset, DataError> {
    Err(DataError::Invalid(format!(
        "{}: CIFAR-10 is not read yet",
        path.display()
    )))
}
