//! Training: the run configuration, AdamW, seeded parameter initialisation and
//! the training loop.

pub mod config;
pub mod optim;
pub mod trainer;

pub use config::{OptimizerConfig, TrainConfig};
pub use optim::AdamW;
pub use trainer::{Params, RunEnd, StepReport, Trainer, init_params};
