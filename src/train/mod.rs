//! Training: the run configuration, AdamW, seeded parameter initialisation and
//! the training loop, and the background worker thread that runs it for the app.

pub mod autosave;
pub mod config;
pub mod optim;
pub mod trainer;
pub mod worker;

pub use config::{OptimizerConfig, TrainConfig};
pub use optim::AdamW;
pub use trainer::{Params, RunEnd, StepReport, Trainer, init_params};
