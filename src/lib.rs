//! FlowLab: train, explore and sample flow-matching generative models.
//!
//! The engine behind the desktop app and the `flowlab` command line:
//!
//! * [`data`]: seeded 2D toy sets and MNIST-layout image sets;
//! * [`flow`]: schedulers, affine probability paths, sources, couplings, training-time sampling;
//! * [`model`]: velocity fields (MLP, UNet) behind the [`model::VelocityField`] trait,
//!   and fast CPU kernels ([`model::ops`]);
//! * [`solver`]: fixed-step and adaptive ODE solvers with NFE counts;
//! * [`discrete`]: discrete flow matching (tokens, CTMC sampling);
//! * [`train`]: configuration, AdamW, and the training loop;
//! * [`checkpoint`]: single-file safetensors checkpoints;
//! * [`metrics`]: exact and sliced 2-Wasserstein distances, straightness;
//! * [`quality`]: sample quality against NFE for every solver;
//! * [`classifier`]: a small MNIST classifier that judges generated digits;
//! * [`bench`]: the speed measurements behind `flowlab bench`.
//!
//! **Time convention: t = 0 is noise (x_0 ~ N(0, I)), t = 1 is data (x_1).**
//! Paths are x_t = alpha_t x_1 + sigma_t x_0 (Lipman et al., arXiv 2412.06264).

#[cfg(feature = "gui")]
pub mod app;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod cli;
pub mod data;
pub mod discrete;
pub mod error;
pub mod flow;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod quality;
pub mod rng;
pub mod sample;
pub mod solver;
pub mod train;

pub use error::{Error, Result};
