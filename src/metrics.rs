//! Sample-quality metrics between point sets.
//!
//! * [`w2_exact`]: the exact 2-Wasserstein distance between two equal-size
//!   empirical distributions, `W2 = sqrt(min_π (1/n) Σ_i ‖a_i − b_π(i)‖²)` over
//!   permutations π, solved as a linear assignment problem (the `lsap` crate,
//!   a port of SciPy's `linear_sum_assignment`). O(n³): use up to a few thousand points.
//! * [`sliced_w2`]: the sliced 2-Wasserstein distance, the root mean over random
//!   unit directions θ of the 1-D W2² between the projections ⟨a, θ⟩ and ⟨b, θ⟩
//!   (sorting solves each 1-D problem exactly). Cheap for large sets.

use rand::RngExt as _;

use crate::rng::{Stream, gaussian, stream_rng};
use crate::{Error, Result};

fn check(a: &[f32], b: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || !a.len().is_multiple_of(dim) || b.len() != a.len() || a.is_empty() {
        return Err(Error::config(format!(
            "metrics need two non-empty point sets of equal size and dimension {dim}, got {} and {} values",
            a.len(),
            b.len()
        )));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(Error::config(
            "metrics: the point sets contain NaN or infinite values",
        ));
    }
    Ok(a.len() / dim)
}

/// Exact W2 between two equal-size point sets, each flattened `(n, dim)`.
pub fn w2_exact(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    let n = check(a, b, dim)?;
    let mut cost = Vec::with_capacity(n * n);
    for pa in a.chunks_exact(dim) {
        for pb in b.chunks_exact(dim) {
            let d: f64 = pa
                .iter()
                .zip(pb)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum();
            cost.push(d);
        }
    }
    let total = lsap::get_assigned_cost(n, n, &cost, false)
        .map_err(|e| Error::config(format!("assignment solver failed: {e}")))?;
    Ok((total / n as f64).max(0.0).sqrt())
}

/// Sliced W2 between two equal-size point sets, each flattened `(n, dim)`,
/// over `projections` random directions drawn from `seed`.
pub fn sliced_w2(a: &[f32], b: &[f32], dim: usize, projections: usize, seed: u64) -> Result<f64> {
    let n = check(a, b, dim)?;
    let mut rng = stream_rng(seed, Stream::Eval, 0x51ced);
    let mut total = 0.0f64;
    let projections = projections.max(1);
    for _ in 0..projections {
        let mut theta: Vec<f64> = gaussian(dim, &mut rng).into_iter().map(f64::from).collect();
        let norm = theta.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm < 1e-12 {
            theta = vec![0.0; dim];
            if let Some(i) = theta.get_mut(rng.random_range(0..dim)) {
                *i = 1.0;
            }
        } else {
            theta.iter_mut().for_each(|v| *v /= norm);
        }
        let project = |pts: &[f32]| -> Vec<f64> {
            let mut p: Vec<f64> = pts
                .chunks_exact(dim)
                .map(|q| q.iter().zip(&theta).map(|(x, t)| f64::from(*x) * t).sum())
                .collect();
            p.sort_by(f64::total_cmp);
            p
        };
        let (pa, pb) = (project(a), project(b));
        total += pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    Ok((total / projections as f64).sqrt())
}

/// Fréchet distance between Gaussians fitted to two sets of feature vectors
/// (`a`: `(n, d)` and `b`: `(m, d)`, row-major):
/// `|μ_a − μ_b|² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)`. The trace of the square root
/// is taken as Σ √λ over the eigenvalues of `Σ_a^½ Σ_b Σ_a^½` (symmetric, with
/// the same eigenvalues as `Σ_a Σ_b`). With a classifier's features this is the
/// recipe of FID, but it is not Inception FID.
pub fn frechet_distance(a: &[f32], b: &[f32], d: usize) -> Result<f64> {
    use nalgebra::{DMatrix, DVector};
    if d == 0
        || !a.len().is_multiple_of(d)
        || !b.len().is_multiple_of(d)
        || a.len() < 2 * d
        || b.len() < 2 * d
    {
        return Err(Error::config(format!(
            "Fréchet distance: need at least 2 vectors of {d} values in each set"
        )));
    }
    let stats = |x: &[f32]| {
        let n = x.len() / d;
        let m = DMatrix::from_row_iterator(n, d, x.iter().map(|&v| f64::from(v)));
        let mean: DVector<f64> = m.row_mean().transpose();
        let mut centred = m;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centred.transpose() * &centred / (n as f64 - 1.0);
        (mean, cov)
    };
    let (mu_a, cov_a) = stats(a);
    let (mu_b, cov_b) = stats(b);
    let eig = nalgebra::SymmetricEigen::new(cov_a.clone());
    let sqrt_vals = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    let sqrt_a =
        &eig.eigenvectors * DMatrix::from_diagonal(&sqrt_vals) * eig.eigenvectors.transpose();
    let m = &sqrt_a * &cov_b * &sqrt_a;
    let m = (&m + m.transpose()) * 0.5;
    let tr_sqrt: f64 = nalgebra::SymmetricEigen::new(m)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    let diff = (mu_a - mu_b).norm_squared();
    Ok((diff + cov_a.trace() + cov_b.trace() - 2.0 * tr_sqrt).max(0.0))
}

/// How straight sampled trajectories are (Liu et al. 2022, rectified flow):
/// `S = mean_i Σ_k Δt_k ‖(x_{k+1} − x_k)/Δt_k − (x_N − x_0)‖²` over the
/// solver states `states[k]` (each flattened `(n, dim)`) at `times[k]` from
/// t = 0 to 1. S = 0 for straight lines traversed at constant speed. Also
/// returns the mean squared displacement `mean_i ‖x_N − x_0‖²` (the transport
/// cost of the learned map).
pub fn straightness(times: &[f64], states: &[Vec<f32>], dim: usize) -> Result<(f64, f64)> {
    let (Some(first), Some(last)) = (states.first(), states.last()) else {
        return Err(Error::config("straightness needs at least two states"));
    };
    if times.len() != states.len() || states.len() < 2 || dim == 0 {
        return Err(Error::config(
            "straightness needs one time per state and at least two states",
        ));
    }
    let n = first.len() / dim;
    if n == 0 || states.iter().any(|s| s.len() != first.len()) {
        return Err(Error::config("straightness: states of unequal size"));
    }
    let (mut s, mut disp) = (0.0f64, 0.0f64);
    for i in 0..n {
        let r = i * dim..(i + 1) * dim;
        let (a, b) = (first.get(r.clone()), last.get(r.clone()));
        let (Some(a), Some(b)) = (a, b) else { continue };
        let chord: Vec<f64> = a.iter().zip(b).map(|(p, q)| f64::from(q - p)).collect();
        disp += chord.iter().map(|c| c * c).sum::<f64>();
        for (k, w) in states.windows(2).enumerate() {
            let dt = times
                .get(k + 1)
                .zip(times.get(k))
                .map_or(0.0, |(t1, t0)| t1 - t0);
            if dt <= 0.0 {
                continue;
            }
            let (Some(p), Some(q)) = (w[0].get(r.clone()), w[1].get(r.clone())) else {
                continue;
            };
            let dev: f64 = p
                .iter()
                .zip(q)
                .zip(&chord)
                .map(|((p, q), c)| (f64::from(q - p) / dt - c).powi(2))
                .sum();
            s += dt * dev;
        }
    }
    Ok((s / n as f64, disp / n as f64))
}
