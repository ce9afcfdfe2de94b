//! An image folder in torchvision's ImageFolder layout (`root/class/*.png|jpg`).
