//! Integration tests of the FlowLab engine and CLI (one test binary, so the
//! heavy dependencies are linked once). Run with `cargo test --release`.

mod app;
mod autosave;
mod checkpoint;
mod classifier;
mod cli;
mod common;
mod coupling;
mod data;
mod discrete;
mod flow;
mod likelihood;
mod manifold;
mod metrics;
mod ops;
mod props;
mod solver;
mod train;
mod unet;
mod worker;
