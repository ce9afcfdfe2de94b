//! # hivemesh-evolve
//!
//! The search algorithms of hivemesh, as a pure library (no I/O, no networking, no `burn`; every
//! random choice draws from a seeded ChaCha RNG passed in, so every peer derives the same next
//! generation from the same agreed results).
//!
//! It will own (see the `evolve` issue):
//! * NSGA-II (Deb et al. 2002, <https://doi.org/10.1109/4235.996017>): fast non-dominated
//!   sorting, crowding distance, binary tournament, elitist survival, with an `ask`/`tell` step
//!   API so candidates are evaluated elsewhere (on the swarm); regularised evolution as a
//!   second strategy;
//! * the architecture search space (NSGA-Net macro style, Lu et al. 2019,
//!   <https://arxiv.org/abs/1810.03522>, and an MLP space) and its architecture IR with exact
//!   parameter and FLOP counts;
//! * genetic-programming loss expressions (AutoML-Zero / GLO style) with simplification,
//!   canonical hashing and behavioural fingerprints.
//!
//! Nothing is implemented yet: this crate is a placeholder so the workspace has its final shape.
