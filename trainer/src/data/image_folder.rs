//! An image folder in torchvision's ImageFolder layout (`root/class/*.png|jpg`).

use std::path::Path;

use hivemesh_evolve::arch::Shape;

use super::Dataset;
use crate::error::DataError;

/// An image folder (stub until the reader lands).
pub fn load_image_folder(root: &Path, _shape: Shape) -> Result<(Dataset, Vec<String>), DataError> {
    Err(DataError::Invalid(format!(
        "{}: image folders are not read yet",
        root.display()
    )))
}
