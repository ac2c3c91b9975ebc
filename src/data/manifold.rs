//! Data on manifolds: on the sphere S² (unit vectors in R³) a mixture of von
//! Mises-Fisher clusters and a checkerboard in latitude/longitude; on the flat
//! torus T² (points `(cos φ, sin φ, cos ψ, sin ψ)` in R⁴, see
//! [`crate::flow::manifold`]) a wrapped checkerboard and a mixture of
//! wrapped Gaussians placed like the main regions of a Ramachandran plot of
//! protein backbone angles (φ, ψ).

use std::f64::consts::{FRAC_PI_2, PI};

use rand::RngExt as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::flow::Manifold;
use crate::flow::manifold::{torus_angles, torus_point, wrap};
use crate::rng::gaussian;

/// A distribution on a manifold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ManifoldSet {
    /// Four von Mises-Fisher clusters on the sphere with concentration `kappa`.
    SphereVmf {
        /// Concentration κ (larger: tighter clusters).
        kappa: f64,
    },
    /// A checkerboard on the sphere: 8 longitude x 4 latitude cells, uniform on the dark ones.
    SphereCheckerboard,
    /// A 4x4 checkerboard on the torus, uniform on the dark squares.
    TorusCheckerboard,
    /// Wrapped Gaussians at the β-sheet, right- and left-handed helix regions of (φ, ψ).
    TorusProtein,
}

/// Centres of the sphere's vMF clusters (unit vectors).
const VMF_CENTRES: [[f64; 3]; 4] = [
    [0.0, 0.0, 1.0],
    [0.942_809, 0.0, -0.333_333],
    [-0.471_405, 0.816_497, -0.333_333],
    [-0.471_405, -0.816_497, -0.333_333],
];

/// (weight, φ centre, ψ centre, φ spread, ψ spread) of the protein-like mixture.
const PROTEIN: [(f64, f64, f64, f64, f64); 3] = [
    (0.5, -2.1, 2.4, 0.35, 0.45),
    (0.35, -1.1, -0.7, 0.25, 0.3),
    (0.15, 1.0, 0.8, 0.25, 0.35),
];

impl ManifoldSet {
    /// Every set with default parameters.
    pub const ALL: [ManifoldSet; 4] = [
        ManifoldSet::SphereVmf { kappa: 30.0 },
        ManifoldSet::SphereCheckerboard,
        ManifoldSet::TorusCheckerboard,
        ManifoldSet::TorusProtein,
    ];

    /// Its command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            ManifoldSet::SphereVmf { .. } => "sphere-vmf",
            ManifoldSet::SphereCheckerboard => "sphere-checkerboard",
            ManifoldSet::TorusCheckerboard => "torus-checkerboard",
            ManifoldSet::TorusProtein => "torus-protein",
        }
    }

    /// Checks the parameters are in range.
    pub fn validate(&self) -> crate::Result<()> {
        if let ManifoldSet::SphereVmf { kappa } = self
            && !(kappa.is_finite() && *kappa > 0.0 && *kappa <= 1e4)
        {
            return Err(crate::Error::config(format!(
                "vMF concentration kappa must be in (0, 10000], got {kappa}"
            )));
        }
        Ok(())
    }

    /// Looks a set up by name, with default parameters.
    pub fn from_name(name: &str) -> Option<ManifoldSet> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The manifold the set lives on.
    pub fn manifold(&self) -> Manifold {
        match self {
            ManifoldSet::SphereVmf { .. } | ManifoldSet::SphereCheckerboard => Manifold::Sphere,
            ManifoldSet::TorusCheckerboard | ManifoldSet::TorusProtein => Manifold::Torus,
        }
    }

    /// `n` points, flattened `(n, 3)` on the sphere or `(n, 4)` on the torus.
    pub fn draw_n(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * self.manifold().ambient_dim());
        match *self {
            ManifoldSet::SphereVmf { kappa } => {
                for _ in 0..n {
                    let mu = VMF_CENTRES[rng.random_range(0..VMF_CENTRES.len())];
                    out.extend(vmf(mu, kappa, rng).map(|v| v as f32));
                }
            }
            ManifoldSet::SphereCheckerboard => {
                while out.len() < 3 * n {
                    let p = Manifold::Sphere.uniform(1, rng);
                    let q: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
                    if sphere_checker_dark(&q) {
                        out.extend(p);
                    }
                }
            }
            ManifoldSet::TorusCheckerboard => {
                while out.len() < 4 * n {
                    let (a, b) = (
                        rng.random::<f64>() * 2.0 * PI - PI,
                        rng.random::<f64>() * 2.0 * PI - PI,
                    );
                    if torus_checker_dark(a, b) {
                        out.extend(torus_point(a, b));
                    }
                }
            }
            ManifoldSet::TorusProtein => {
                let g = gaussian(2 * n, rng);
                for pair in g.chunks_exact(2) {
                    let u = rng.random::<f64>();
                    let mut acc = 0.0;
                    let mut c = PROTEIN[0];
                    for comp in PROTEIN {
                        acc += comp.0;
                        c = comp;
                        if u < acc {
                            break;
                        }
                    }
                    let (_, m1, m2, s1, s2) = c;
                    out.extend(torus_point(
                        m1 + s1 * f64::from(pair[0]),
                        m2 + s2 * f64::from(pair[1]),
                    ));
                }
            }
        }
        out
    }

    /// Whether the set has a support test ([`ManifoldSet::on_support`] is
    /// not trivially true): the checkerboards.
    pub fn has_support_test(&self) -> bool {
        matches!(
            self,
            ManifoldSet::SphereCheckerboard | ManifoldSet::TorusCheckerboard
        )
    }

    /// The share of the points (flattened) on the support (see [`ManifoldSet::on_support`]).
    pub fn support_share(&self, points: &[f32]) -> f64 {
        let d = self.manifold().ambient_dim();
        let n = points.len() / d;
        if n == 0 {
            return 0.0;
        }
        let hits = points
            .chunks_exact(d)
            .filter(|p| self.on_support(p))
            .count();
        hits as f64 / n as f64
    }

    /// Whether a point lies where the set has mass: on a dark square of a
    /// checkerboard (always true for the mixtures). For checking samples.
    pub fn on_support(&self, p: &[f32]) -> bool {
        let q: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
        match self {
            ManifoldSet::SphereCheckerboard => sphere_checker_dark(&q),
            ManifoldSet::TorusCheckerboard => {
                let [a, b] = torus_angles(p);
                torus_checker_dark(f64::from(a), f64::from(b))
            }
            _ => true,
        }
    }
}

/// A von Mises-Fisher draw on S² around `mu` (Wood's method for 3 dimensions).
fn vmf(mu: [f64; 3], kappa: f64, rng: &mut StdRng) -> [f64; 3] {
    let u = rng.random::<f64>().max(1e-300);
    // w = cos(angle to mu), with density ∝ exp(κ w) on [−1, 1].
    let w = 1.0 + (u + (1.0 - u) * (-2.0 * kappa).exp()).ln() / kappa;
    let w = w.clamp(-1.0, 1.0);
    // A unit vector orthogonal to mu.
    let a = if mu[0].abs() < 0.9 {
        [1.0, 0.0, 0.0]
    } else {
        [0.0, 1.0, 0.0]
    };
    let d = a[0] * mu[0] + a[1] * mu[1] + a[2] * mu[2];
    let e1 = [a[0] - d * mu[0], a[1] - d * mu[1], a[2] - d * mu[2]];
    let n1 = (e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]).sqrt();
    let e1 = [e1[0] / n1, e1[1] / n1, e1[2] / n1];
    let e2 = [
        mu[1] * e1[2] - mu[2] * e1[1],
        mu[2] * e1[0] - mu[0] * e1[2],
        mu[0] * e1[1] - mu[1] * e1[0],
    ];
    let phi = rng.random::<f64>() * 2.0 * PI;
    let r = (1.0 - w * w).max(0.0).sqrt();
    let (s, c) = phi.sin_cos();
    [0, 1, 2].map(|i| w * mu[i] + r * (c * e1[i] + s * e2[i]))
}

/// Dark cells of the 8 (longitude) x 4 (latitude) checkerboard on the sphere.
fn sphere_checker_dark(p: &[f64]) -> bool {
    let [x, y, z] = [0, 1, 2].map(|i| p.get(i).copied().unwrap_or(0.0));
    let lon = y.atan2(x); // [−π, π]
    let lat = z.clamp(-1.0, 1.0).asin(); // [−π/2, π/2]
    let i = (((lon + PI) / (2.0 * PI) * 8.0).floor() as i64).clamp(0, 7);
    let j = (((lat + FRAC_PI_2) / PI * 4.0).floor() as i64).clamp(0, 3);
    (i + j) % 2 == 0
}

/// Dark squares of the 4x4 checkerboard on [−π, π)².
fn torus_checker_dark(a: f64, b: f64) -> bool {
    let i = (((wrap(a) + PI) / (2.0 * PI) * 4.0).floor() as i64).clamp(0, 3);
    let j = (((wrap(b) + PI) / (2.0 * PI) * 4.0).floor() as i64).clamp(0, 3);
    (i + j) % 2 == 0
}
