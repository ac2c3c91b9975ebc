//! Manifolds for Riemannian flow matching (Chen & Lipman 2023): the unit
//! sphere S² embedded in R³, and the flat torus T² as angles in [−π, π)².
//!
//! Each provides the exponential and logarithm maps, the projection of a point
//! onto the manifold and of a vector onto the tangent space, geodesics, and the
//! uniform distribution. The geodesic probability path from noise x_0 to data
//! x_1 is `x_t = exp_{x_0}(t log_{x_0}(x_1))`, with conditional velocity
//! `u_t(x_t | x_1) = log_{x_t}(x_1) / (1 − t)`.
//!
//! Points are flattened `(n, ambient_dim)` f32 slices; the maths runs in f64.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::rng::gaussian;

/// A manifold FlowLab can learn flows on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manifold {
    /// The unit sphere S² ⊂ R³ (points are unit vectors).
    Sphere,
    /// The flat torus T² = (R / 2πZ)², points as two angles in [−π, π).
    Torus,
}

/// Wraps an angle into [−π, π).
pub fn wrap(a: f64) -> f64 {
    let w = (a + PI).rem_euclid(2.0 * PI) - PI;
    if w >= PI { w - 2.0 * PI } else { w }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

impl Manifold {
    /// Coordinates per point: 3 for the sphere, 2 for the torus.
    pub fn ambient_dim(self) -> usize {
        match self {
            Manifold::Sphere => 3,
            Manifold::Torus => 2,
        }
    }

    /// The nearest point of the manifold (normalise / wrap the angles).
    pub fn project_point(self, x: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let n = norm(x);
                if n > 0.0 {
                    x.iter().map(|v| v / n).collect()
                } else {
                    vec![0.0, 0.0, 1.0]
                }
            }
            Manifold::Torus => x.iter().map(|&a| wrap(a)).collect(),
        }
    }

    /// The component of `v` tangent to the manifold at `x`.
    pub fn project_tangent(self, x: &[f64], v: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let d = dot(x, v);
                v.iter().zip(x).map(|(vi, xi)| vi - d * xi).collect()
            }
            Manifold::Torus => v.to_vec(),
        }
    }

    /// The point reached from `x` along the geodesic with initial velocity `v` in unit time.
    pub fn exp(self, x: &[f64], v: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let v = self.project_tangent(x, v);
                let th = norm(&v);
                if th < 1e-12 {
                    return self
                        .project_point(&x.iter().zip(&v).map(|(a, b)| a + b).collect::<Vec<_>>());
                }
                let (s, c) = th.sin_cos();
                let y: Vec<f64> = x
                    .iter()
                    .zip(&v)
                    .map(|(xi, vi)| c * xi + s * vi / th)
                    .collect();
                self.project_point(&y)
            }
            Manifold::Torus => x.iter().zip(v).map(|(a, b)| wrap(a + b)).collect(),
        }
    }

    /// The tangent vector at `x` whose exponential is `y` (the shortest geodesic).
    pub fn log(self, x: &[f64], y: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let c = dot(x, y).clamp(-1.0, 1.0);
                let th = c.acos();
                let w: Vec<f64> = y.iter().zip(x).map(|(yi, xi)| yi - c * xi).collect();
                let wn = norm(&w);
                if wn < 1e-12 {
                    // y = x (or the antipode, where the direction is arbitrary).
                    return vec![0.0; 3];
                }
                w.iter().map(|wi| th * wi / wn).collect()
            }
            Manifold::Torus => x.iter().zip(y).map(|(a, b)| wrap(b - a)).collect(),
        }
    }

    /// Geodesic distance.
    pub fn distance(self, x: &[f64], y: &[f64]) -> f64 {
        norm(&self.log(x, y))
    }

    /// The point at time `t` of the geodesic from `x0` (t = 0) to `x1` (t = 1).
    pub fn geodesic(self, x0: &[f64], x1: &[f64], t: f64) -> Vec<f64> {
        let v: Vec<f64> = self.log(x0, x1).iter().map(|a| t * a).collect();
        self.exp(x0, &v)
    }

    /// The conditional velocity at `xt` (time `t` < 1) of the geodesic path towards `x1`.
    pub fn conditional_velocity(self, xt: &[f64], x1: &[f64], t: f64) -> Vec<f64> {
        let k = 1.0 / (1.0 - t).max(1e-4);
        self.log(xt, x1).iter().map(|a| k * a).collect()
    }

    /// `n` points from the uniform distribution, flattened `(n, ambient_dim)`.
    pub fn uniform(self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        match self {
            Manifold::Sphere => {
                let g = gaussian(3 * n, rng);
                g.chunks_exact(3)
                    .flat_map(|p| {
                        let v: Vec<f64> = p.iter().map(|&a| f64::from(a)).collect();
                        self.project_point(&v).into_iter().map(|a| a as f32)
                    })
                    .collect()
            }
            Manifold::Torus => {
                use rand::RngExt as _;
                (0..2 * n)
                    .map(|_| (rng.random::<f64>() * 2.0 * PI - PI) as f32)
                    .collect()
            }
        }
    }

    /// Largest distance of any point of `x` (flattened) from the manifold.
    pub fn max_off_manifold(self, x: &[f32]) -> f64 {
        match self {
            Manifold::Sphere => x
                .chunks_exact(3)
                .map(|p| {
                    let v: Vec<f64> = p.iter().map(|&a| f64::from(a)).collect();
                    (norm(&v) - 1.0).abs()
                })
                .fold(0.0, f64::max),
            Manifold::Torus => x
                .iter()
                .map(|&a| {
                    let a = f64::from(a);
                    if (-PI..PI + 1e-6).contains(&a) {
                        0.0
                    } else {
                        (a - wrap(a)).abs()
                    }
                })
                .fold(0.0, f64::max),
        }
    }
}
