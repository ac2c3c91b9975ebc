//! How training times t in [0, 1] are drawn.

use rand::RngExt as _;
use rand::rngs::StdRng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Distribution of training times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[derive(Default)]
pub enum TimeSampling {
    /// t ~ U[0, 1).
    #[default]
    Uniform,
    /// t = sigmoid(mean + std · z), z ~ N(0, 1): more weight on mid-path times
    /// (Esser et al. 2024).
    LogitNormal {
        /// Location of the underlying normal.
        mean: f64,
        /// Scale of the underlying normal.
        std: f64,
    },
}

impl TimeSampling {
    /// Logit-normal with mean 0 and standard deviation 1.
    pub const LOGIT_NORMAL: TimeSampling = TimeSampling::LogitNormal {
        mean: 0.0,
        std: 1.0,
    };

    /// The command-line name (`uniform`, `logit-normal`).
    pub fn name(&self) -> &'static str {
        match self {
            TimeSampling::Uniform => "uniform",
            TimeSampling::LogitNormal { .. } => "logit-normal",
        }
    }

    /// Looks a time sampling up by name, with default parameters.
    pub fn from_name(name: &str) -> Option<TimeSampling> {
        [TimeSampling::Uniform, Self::LOGIT_NORMAL]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Draws one time in [0, `t_max`].
    pub fn draw(&self, t_max: f64, rng: &mut StdRng) -> f64 {
        let t = match *self {
            TimeSampling::Uniform => rng.random::<f64>(),
            TimeSampling::LogitNormal { mean, std } => {
                let z: f64 = rng.sample(StandardNormal);
                1.0 / (1.0 + (-(mean + std * z)).exp())
            }
        };
        t.min(t_max)
    }
}
