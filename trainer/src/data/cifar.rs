//! CIFAR-10's binary batches.
