//! The search crate's integration tests, as one binary: genetic programming and NSGA-II search.

mod gp;
mod search;
