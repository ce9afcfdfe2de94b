//! The trainer's integration tests, as one binary: NAS, loss-search and distillation jobs.

mod common;
mod distill;
mod loss;
mod nas;
