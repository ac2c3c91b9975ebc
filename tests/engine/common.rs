//! Shared helpers.

use candle_core::{Device, Tensor};
use flowlab::train::TrainConfig;

/// A small, fast moons config for tests.
pub fn tiny_config(steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig {
        steps,
        batch_size: 128,
        held_out_size: 256,
        held_out_every: 10,
        ..Default::default()
    };
    if let flowlab::model::ModelConfig::Mlp(m) = &mut cfg.model {
        m.width = 32;
        m.depth = 2;
    }
    cfg
}

/// A fresh temporary folder under the system temp dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowlab-test-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Values of a tensor as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor values")
}

/// Largest absolute difference between two tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    vals(a)
        .iter()
        .zip(vals(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A `(n, d)` f64 tensor from values.
pub fn t64(v: Vec<f64>, n: usize, d: usize) -> Tensor {
    Tensor::from_vec(v, (n, d), &Device::Cpu).expect("tensor")
}

/// Gradients of `sum(y * w)` with respect to everything `y` depends on.
pub fn weighted_sum_grads(y: &Tensor, w: &Tensor) -> candle_core::backprop::GradStore {
    (y * w)
        .expect("mul")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("grad")
}
