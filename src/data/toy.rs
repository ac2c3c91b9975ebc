//! Seeded 2D toy distributions.
//!
//! Each generator draws points in its own "data space" (the coordinates a person
//! expects, e.g. scikit-learn's `make_moons` geometry). Models train in a
//! standardised "model space": see [`Standardizer`].

use rand::RngExt as _;
use rand::rngs::StdRng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// `s · z` with z ~ N(0, 1).
fn gauss(rng: &mut StdRng, s: f32) -> f32 {
    s * rng.sample::<f32, _>(StandardNormal)
}

/// Which 2D distribution to draw from, with its shape parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Toy2d {
    /// Two interleaving half circles, as scikit-learn's `make_moons`: the outer
    /// moon is (cos θ, sin θ), the inner (1 − cos θ, 0.5 − sin θ), θ ~ U[0, π],
    /// plus isotropic Gaussian noise of standard deviation `noise`.
    Moons {
        /// Standard deviation of the added Gaussian noise (scikit-learn's `noise`).
        noise: f32,
    },
    /// Two concentric circles, as scikit-learn's `make_circles`: radius 1 and `factor`.
    Circles {
        /// Standard deviation of the added Gaussian noise.
        noise: f32,
        /// Radius of the inner circle relative to the outer one, in (0, 1).
        factor: f32,
    },
    /// Eight Gaussians with centres evenly spaced on a circle of radius 2.
    EightGaussians {
        /// Standard deviation of each Gaussian.
        std: f32,
    },
    /// A 4x4 checkerboard on [-2, 2]^2 with uniform density on the 8 dark squares.
    Checkerboard,
    /// Two interleaved spirals r = θ, θ ∈ [0, 3π], the second rotated by 180°.
    Spirals {
        /// Standard deviation of the added Gaussian noise.
        noise: f32,
    },
    /// scikit-learn's `make_swiss_roll` seen from above: (t cos t, t sin t), t ~ U[1.5π, 4.5π].
    SwissRoll {
        /// Standard deviation of the added Gaussian noise.
        noise: f32,
    },
}

impl Toy2d {
    /// Every toy set with its default parameters, in the order the app lists them.
    pub const ALL: [Toy2d; 6] = [
        Toy2d::Moons { noise: 0.05 },
        Toy2d::Circles {
            noise: 0.05,
            factor: 0.5,
        },
        Toy2d::EightGaussians { std: 0.15 },
        Toy2d::Checkerboard,
        Toy2d::Spirals { noise: 0.3 },
        Toy2d::SwissRoll { noise: 0.25 },
    ];

    /// The command-line name of this set (`moons`, `circles`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Toy2d::Moons { .. } => "moons",
            Toy2d::Circles { .. } => "circles",
            Toy2d::EightGaussians { .. } => "8gaussians",
            Toy2d::Checkerboard => "checkerboard",
            Toy2d::Spirals { .. } => "spirals",
            Toy2d::SwissRoll { .. } => "swissroll",
        }
    }

    /// Looks a set up by its command-line name, with default parameters.
    pub fn from_name(name: &str) -> Option<Toy2d> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The noise (or spread) parameter, if the set has one.
    pub fn noise(&self) -> Option<f32> {
        match *self {
            Toy2d::Moons { noise }
            | Toy2d::Circles { noise, .. }
            | Toy2d::Spirals { noise }
            | Toy2d::SwissRoll { noise } => Some(noise),
            Toy2d::EightGaussians { std } => Some(std),
            Toy2d::Checkerboard => None,
        }
    }

    /// The same set with its noise (or spread) parameter replaced; sets without one are unchanged.
    pub fn with_noise(self, value: f32) -> Toy2d {
        match self {
            Toy2d::Moons { .. } => Toy2d::Moons { noise: value },
            Toy2d::Circles { factor, .. } => Toy2d::Circles {
                noise: value,
                factor,
            },
            Toy2d::EightGaussians { .. } => Toy2d::EightGaussians { std: value },
            Toy2d::Checkerboard => Toy2d::Checkerboard,
            Toy2d::Spirals { .. } => Toy2d::Spirals { noise: value },
            Toy2d::SwissRoll { .. } => Toy2d::SwissRoll { noise: value },
        }
    }

    /// Checks the parameters are finite and in range.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(n) = self.noise()
            && !(n.is_finite() && (0.0..=10.0).contains(&n))
        {
            return Err(crate::Error::config(format!(
                "{}: noise must be in [0, 10], got {n}",
                self.name()
            )));
        }
        if let Toy2d::Circles { factor, .. } = *self
            && !(factor > 0.0 && factor < 1.0)
        {
            return Err(crate::Error::config(format!(
                "circles: factor must be in (0, 1), got {factor}"
            )));
        }
        Ok(())
    }

    /// Draws one point in data space.
    pub fn draw(&self, rng: &mut StdRng) -> [f32; 2] {
        use std::f32::consts::PI;
        match *self {
            Toy2d::Moons { noise } => {
                let theta = PI * rng.random::<f32>();
                let (s, c) = theta.sin_cos();
                let (x, y) = if rng.random::<bool>() {
                    (c, s)
                } else {
                    (1.0 - c, 0.5 - s)
                };
                [x + gauss(rng, noise), y + gauss(rng, noise)]
            }
            Toy2d::Circles { noise, factor } => {
                let theta = 2.0 * PI * rng.random::<f32>();
                let r = if rng.random::<bool>() { 1.0 } else { factor };
                let (s, c) = theta.sin_cos();
                [r * c + gauss(rng, noise), r * s + gauss(rng, noise)]
            }
            Toy2d::EightGaussians { std } => {
                let k = rng.random_range(0..8u32) as f32;
                let (s, c) = (k * PI / 4.0).sin_cos();
                [2.0 * c + gauss(rng, std), 2.0 * s + gauss(rng, std)]
            }
            Toy2d::Checkerboard => {
                let x = rng.random_range(-2.0f32..2.0);
                let column = x.floor().rem_euclid(2.0);
                let y = rng.random::<f32>() - if rng.random::<bool>() { 2.0 } else { 0.0 } + column;
                [x, y]
            }
            Toy2d::Spirals { noise } => {
                let theta = 3.0 * PI * rng.random::<f32>().sqrt();
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                let (s, c) = theta.sin_cos();
                [
                    sign * theta * c + gauss(rng, noise),
                    sign * theta * s + gauss(rng, noise),
                ]
            }
            Toy2d::SwissRoll { noise } => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f32>());
                let (s, c) = t.sin_cos();
                [t * c + gauss(rng, noise), t * s + gauss(rng, noise)]
            }
        }
    }

    /// Draws `n` points in data space, flattened row-major: `(n, 2)`.
    pub fn draw_n(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            out.extend_from_slice(&self.draw(rng));
        }
        out
    }
}

/// The affine map between a 2D set's data space and the model space it trains in.
///
/// Every toy set is standardised the same way: `model = (data − mean) / scale`,
/// with `mean` the per-axis mean and `scale` the root of the average per-axis
/// variance (one scalar, so shapes are not distorted), both estimated from
/// [`Standardizer::REFERENCE_POINTS`] points drawn with seed 0. Model-space data
/// therefore has mean 0 and average variance 1, like the N(0, I) source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Per-axis mean in data space.
    pub mean: [f32; 2],
    /// Common scale factor (data units per model unit).
    pub scale: f32,
}

impl Standardizer {
    /// Number of reference points used to estimate mean and scale.
    pub const REFERENCE_POINTS: usize = 20_000;

    /// The identity map.
    pub const IDENTITY: Standardizer = Standardizer {
        mean: [0.0, 0.0],
        scale: 1.0,
    };

    /// Estimates the standardisation of `toy` from a fixed-seed reference draw.
    pub fn fit(toy: &Toy2d) -> Standardizer {
        use rand::SeedableRng as _;
        let mut rng = StdRng::seed_from_u64(0);
        let pts = toy.draw_n(Self::REFERENCE_POINTS, &mut rng);
        let n = Self::REFERENCE_POINTS as f64;
        let (mut sx, mut sy) = (0.0f64, 0.0f64);
        for p in pts.as_chunks::<2>().0 {
            sx += f64::from(p[0]);
            sy += f64::from(p[1]);
        }
        let (mx, my) = (sx / n, sy / n);
        let mut var = 0.0f64;
        for p in pts.as_chunks::<2>().0 {
            var += (f64::from(p[0]) - mx).powi(2) + (f64::from(p[1]) - my).powi(2);
        }
        let scale = (var / (2.0 * n)).sqrt().max(1e-6);
        Standardizer {
            mean: [mx as f32, my as f32],
            scale: scale as f32,
        }
    }

    /// Maps flattened `(n, 2)` data-space points to model space in place.
    pub fn to_model(&self, xy: &mut [f32]) {
        for p in xy.as_chunks_mut::<2>().0 {
            p[0] = (p[0] - self.mean[0]) / self.scale;
            p[1] = (p[1] - self.mean[1]) / self.scale;
        }
    }

    /// Maps flattened `(n, 2)` model-space points to data space in place.
    pub fn to_data(&self, xy: &mut [f32]) {
        for p in xy.as_chunks_mut::<2>().0 {
            p[0] = p[0] * self.scale + self.mean[0];
            p[1] = p[1] * self.scale + self.mean[1];
        }
    }
}
