//! Manifolds for Riemannian flow matching (Chen & Lipman 2023): the unit
//! sphere S² embedded in R³, and the flat torus T² = S¹ × S¹ embedded in R⁴
//! as two unit circles, `(cos φ, sin φ, cos ψ, sin ψ)`.
//!
//! Both are products of round spheres ("blocks"): one S² block of 3
//! coordinates, or two S¹ blocks of 2. Every map works block by block with the
//! same formulas, and the embedding of the torus is isometric (its metric is
//! the flat one of the angles), so a network sees continuous inputs with no
//! seam at ±π. [`torus_angles`] and [`torus_point`] convert for display.
//!
//! The geodesic probability path from noise x_0 to data x_1 is
//! `x_t = exp_{x_0}(t log_{x_0}(x_1))`, with conditional velocity
//! `u_t(x_t | x_1) = log_{x_t}(x_1) / (1 − t)`.
//!
//! Points are flattened `(n, ambient_dim)`; the per-point maths runs in f64,
//! the batched projections ([`Manifold::project_points`],
//! [`Manifold::project_tangents`]) on candle tensors.

use std::f64::consts::PI;

use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::rng::gaussian;

/// A manifold FlowLab can learn flows on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manifold {
    /// The unit sphere S² ⊂ R³ (points are unit vectors).
    Sphere,
    /// The flat torus T² = S¹ × S¹ ⊂ R⁴, points `(cos φ, sin φ, cos ψ, sin ψ)`.
    Torus,
}

/// Wraps an angle into [−π, π).
pub fn wrap(a: f64) -> f64 {
    let w = (a + PI).rem_euclid(2.0 * PI) - PI;
    if w >= PI { w - 2.0 * PI } else { w }
}

/// The angles (φ, ψ) in [−π, π) of a torus point `(cos φ, sin φ, cos ψ, sin ψ)`.
pub fn torus_angles(p: &[f32]) -> [f32; 2] {
    let g = |i: usize| f64::from(p.get(i).copied().unwrap_or(0.0));
    [wrap(g(1).atan2(g(0))) as f32, wrap(g(3).atan2(g(2))) as f32]
}

/// The torus point `(cos φ, sin φ, cos ψ, sin ψ)` of the angles (φ, ψ).
pub fn torus_point(phi: f64, psi: f64) -> [f32; 4] {
    let (s1, c1) = phi.sin_cos();
    let (s2, c2) = psi.sin_cos();
    [c1 as f32, s1 as f32, c2 as f32, s2 as f32]
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Sphere maps on one block (a unit sphere in R^k, k = 2 or 3).
mod block {
    use super::{dot, norm};

    pub fn project_point(x: &[f64]) -> Vec<f64> {
        let n = norm(x);
        if n > 0.0 {
            x.iter().map(|v| v / n).collect()
        } else {
            let mut e = vec![0.0; x.len()];
            if let Some(last) = e.last_mut() {
                *last = 1.0;
            }
            e
        }
    }

    pub fn project_tangent(x: &[f64], v: &[f64]) -> Vec<f64> {
        let d = dot(x, v);
        v.iter().zip(x).map(|(vi, xi)| vi - d * xi).collect()
    }

    pub fn exp(x: &[f64], v: &[f64]) -> Vec<f64> {
        let v = project_tangent(x, v);
        let th = norm(&v);
        if th < 1e-12 {
            return project_point(&x.iter().zip(&v).map(|(a, b)| a + b).collect::<Vec<_>>());
        }
        let (s, c) = th.sin_cos();
        let y: Vec<f64> = x
            .iter()
            .zip(&v)
            .map(|(xi, vi)| c * xi + s * vi / th)
            .collect();
        project_point(&y)
    }

    pub fn log(x: &[f64], y: &[f64]) -> Vec<f64> {
        let c = dot(x, y).clamp(-1.0, 1.0);
        let th = c.acos();
        let w: Vec<f64> = y.iter().zip(x).map(|(yi, xi)| yi - c * xi).collect();
        let wn = norm(&w);
        if wn < 1e-12 {
            // y = x (or its antipode, where every direction is a shortest path).
            return vec![0.0; x.len()];
        }
        w.iter().map(|wi| th * wi / wn).collect()
    }
}

impl Manifold {
    /// Every manifold.
    pub const ALL: [Manifold; 2] = [Manifold::Sphere, Manifold::Torus];

    /// Coordinates per point: 3 for the sphere, 4 for the torus.
    pub fn ambient_dim(self) -> usize {
        let (blocks, len) = self.blocks();
        blocks * len
    }

    /// The sphere factors: (number of blocks, coordinates per block).
    pub fn blocks(self) -> (usize, usize) {
        match self {
            Manifold::Sphere => (1, 3),
            Manifold::Torus => (2, 2),
        }
    }

    /// Its name in messages (`sphere`, `torus`).
    pub fn name(self) -> &'static str {
        match self {
            Manifold::Sphere => "sphere",
            Manifold::Torus => "torus",
        }
    }

    /// Applies `f` to each block of `x` (and `y`) and concatenates the results.
    fn per_block(self, x: &[f64], y: &[f64], f: impl Fn(&[f64], &[f64]) -> Vec<f64>) -> Vec<f64> {
        let (_, len) = self.blocks();
        x.chunks(len)
            .zip(y.chunks(len))
            .flat_map(|(a, b)| f(a, b))
            .collect()
    }

    /// The nearest point of the manifold (each block normalised).
    pub fn project_point(self, x: &[f64]) -> Vec<f64> {
        let (_, len) = self.blocks();
        x.chunks(len).flat_map(block::project_point).collect()
    }

    /// The component of `v` tangent to the manifold at `x`.
    pub fn project_tangent(self, x: &[f64], v: &[f64]) -> Vec<f64> {
        self.per_block(x, v, block::project_tangent)
    }

    /// The point reached from `x` along the geodesic with initial velocity `v` in unit time.
    pub fn exp(self, x: &[f64], v: &[f64]) -> Vec<f64> {
        self.per_block(x, v, block::exp)
    }

    /// The tangent vector at `x` whose exponential is `y` (the shortest geodesic).
    pub fn log(self, x: &[f64], y: &[f64]) -> Vec<f64> {
        self.per_block(x, y, block::log)
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

    /// `n` points from the uniform distribution, flattened `(n, ambient_dim)`
    /// (a normalised Gaussian in each block).
    pub fn uniform(self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let g = gaussian(self.ambient_dim() * n, rng);
        let (_, len) = self.blocks();
        g.chunks_exact(len)
            .flat_map(|p| {
                let v: Vec<f64> = p.iter().map(|&a| f64::from(a)).collect();
                block::project_point(&v).into_iter().map(|a| a as f32)
            })
            .collect()
    }

    /// Largest distance of any point of `x` (flattened) from the manifold:
    /// the largest |‖block‖ − 1|.
    pub fn max_off_manifold(self, x: &[f32]) -> f64 {
        let (_, len) = self.blocks();
        x.chunks(len)
            .map(|p| {
                let v: Vec<f64> = p.iter().map(|&a| f64::from(a)).collect();
                (norm(&v) - 1.0).abs()
            })
            .fold(0.0, f64::max)
    }

    /// A training batch of the geodesic path: for noise `x0` and data `x1`
    /// (both `(n, ambient_dim)` on the manifold) and times `t` (n values in
    /// [0, 1)), the points `x_t = exp_{x0}(t log_{x0} x1)` and the conditional
    /// velocities `log_{x_t}(x1) / (1 − t)`, both `(n, ambient_dim)`.
    pub fn geodesic_batch(self, x0: &Tensor, x1: &Tensor, t: &[f64]) -> Result<(Tensor, Tensor)> {
        let d = self.ambient_dim();
        let a = x0.flatten_all()?.to_vec1::<f32>()?;
        let b = x1.flatten_all()?.to_vec1::<f32>()?;
        let mut xt = Vec::with_capacity(a.len());
        let mut ut = Vec::with_capacity(a.len());
        for ((p, q), &ti) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(t) {
            let p: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
            let q: Vec<f64> = q.iter().map(|&v| f64::from(v)).collect();
            let x = self.geodesic(&p, &q, ti);
            let u = self.conditional_velocity(&x, &q, ti);
            xt.extend(x.iter().map(|&v| v as f32));
            ut.extend(u.iter().map(|&v| v as f32));
        }
        let shape = (t.len(), d);
        Ok((
            Tensor::from_vec(xt, shape, x0.device())?,
            Tensor::from_vec(ut, shape, x0.device())?,
        ))
    }

    /// A point's map coordinates in radians: (longitude, latitude) on the
    /// sphere (longitude in [−π, π], latitude in [−π/2, π/2]), (φ, ψ) in
    /// [−π, π) on the torus.
    pub fn chart(self, p: &[f32]) -> [f32; 2] {
        match self {
            Manifold::Sphere => {
                let g = |i: usize| p.get(i).copied().unwrap_or(0.0);
                let r = (g(0) * g(0) + g(1) * g(1) + g(2) * g(2)).sqrt().max(1e-12);
                [g(1).atan2(g(0)), (g(2) / r).clamp(-1.0, 1.0).asin()]
            }
            Manifold::Torus => torus_angles(p),
        }
    }

    /// Names of the [`Manifold::chart`] coordinates.
    pub fn chart_names(self) -> [&'static str; 2] {
        match self {
            Manifold::Sphere => ["longitude", "latitude"],
            Manifold::Torus => ["phi", "psi"],
        }
    }

    /// Projects a batch of points `(n, ambient_dim)` onto the manifold.
    pub fn project_points(self, x: &Tensor) -> Result<Tensor> {
        let (blocks, len) = self.blocks();
        let n = x.dim(0)?;
        let b = x.reshape((n, blocks, len))?;
        let norm = b.sqr()?.sum_keepdim(2)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(b.broadcast_div(&norm)?.reshape(x.shape())?)
    }

    /// Projects a batch of vectors `v` `(n, ambient_dim)` onto the tangent spaces
    /// at the points `x` `(n, ambient_dim)`: `v − ⟨x, v⟩ x` block by block.
    pub fn project_tangents(self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (blocks, len) = self.blocks();
        let n = x.dim(0)?;
        let xb = x.reshape((n, blocks, len))?;
        let vb = v.reshape((n, blocks, len))?;
        let d = (&xb * &vb)?.sum_keepdim(2)?;
        Ok((vb - xb.broadcast_mul(&d)?)?.reshape(v.shape())?)
    }
}
