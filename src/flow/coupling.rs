//! Couplings: which source point x_0 each data point x_1 of a training batch is
//! paired with. The conditional path between the two, and so the regression
//! target x_1 − x_0 (CondOT), depends on this choice.
//!
//! * [`Coupling::Independent`]: the pairs as drawn (I-CFM).
//! * [`Coupling::ExactOt`]: minibatch optimal transport (OT-CFM, Tong et al.
//!   2023; Pooladian et al. 2023): the source points are *permuted* so that the
//!   pairs minimise `Σ_i ‖x_0,σ(i) − x_1,i‖²`, an exact linear assignment. Every
//!   point is used exactly once (no pairs drawn with replacement).
//! * [`Coupling::Sinkhorn`]: entropic OT. Sinkhorn iterations (in the log
//!   domain) give the plan `P = argmin ⟨P, C⟩ − ε H(P)` with uniform marginals;
//!   each data point then draws its source point from its column of P, so
//!   duplicates are possible. `ε` is relative to the mean pair cost: small is
//!   close to exact OT, large close to independent pairs.
//!
//! With `per_class` (labelled data), pairs are only formed within a class: the
//! assignment is solved separately for each label's points.

use rand::RngExt as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How source and data points are paired in a training batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Coupling {
    /// Pairs as drawn (independent coupling).
    #[default]
    Independent,
    /// Minibatch exact optimal transport: a permutation of the source points.
    ExactOt,
    /// Entropic optimal transport with regularisation `reg` (times the mean cost).
    Sinkhorn {
        /// Entropy weight ε relative to the mean squared distance of the batch, > 0.
        reg: f64,
    },
}

/// Sinkhorn iterations at most.
const SINKHORN_ITERS: usize = 1000;
/// Training stops Sinkhorn when every marginal is within this relative error:
/// the pairs drawn from the plan hardly change beyond it.
const TRAIN_TOL: f64 = 1e-3;

impl Coupling {
    /// Every coupling, for menus.
    pub const ALL: [Coupling; 3] = [
        Coupling::Independent,
        Coupling::ExactOt,
        Coupling::Sinkhorn { reg: 0.05 },
    ];

    /// Its command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Coupling::Independent => "independent",
            Coupling::ExactOt => "exact-ot",
            Coupling::Sinkhorn { .. } => "sinkhorn",
        }
    }

    /// Looks a coupling up by its command-line name (`reg` for Sinkhorn).
    pub fn from_name(name: &str, reg: f64) -> Option<Coupling> {
        match name {
            "independent" => Some(Coupling::Independent),
            "exact-ot" | "ot" => Some(Coupling::ExactOt),
            "sinkhorn" => Some(Coupling::Sinkhorn { reg }),
            _ => None,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            Coupling::Sinkhorn { reg } if !(reg.is_finite() && *reg > 0.0) => Err(Error::config(
                format!("the Sinkhorn entropy must be a number > 0, got {reg}"),
            )),
            _ => Ok(()),
        }
    }

    /// Re-pairs a batch in place: reorders the source points `x0` (flattened
    /// `(n, dim)`) so that row i pairs with data row i of `x1`. With `labels`
    /// (one per row), only points of the same class are paired. Randomness
    /// (Sinkhorn's draws) comes from `rng`.
    pub fn pair(
        &self,
        x0: &mut [f32],
        x1: &[f32],
        dim: usize,
        labels: Option<&[u32]>,
        rng: &mut StdRng,
    ) -> Result<()> {
        if *self == Coupling::Independent {
            return Ok(());
        }
        if dim == 0 || x0.len() != x1.len() || !x0.len().is_multiple_of(dim) {
            return Err(Error::config(format!(
                "coupling needs two batches of equal size and dimension {dim}, got {} and {} values",
                x0.len(),
                x1.len()
            )));
        }
        let n = x0.len() / dim;
        let groups: Vec<Vec<usize>> = match labels {
            Some(l) if l.len() == n => {
                let mut by: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
                for (i, &c) in l.iter().enumerate() {
                    by.entry(c).or_default().push(i);
                }
                by.into_values().collect()
            }
            Some(l) => {
                return Err(Error::config(format!(
                    "coupling: {} labels for {n} points",
                    l.len()
                )));
            }
            None => vec![(0..n).collect()],
        };
        let source = x0.to_vec();
        for rows in groups {
            let cost = cost_matrix(&source, x1, dim, &rows);
            let chosen = match self {
                Coupling::Independent => continue,
                Coupling::ExactOt => assignment(&cost, rows.len())?,
                Coupling::Sinkhorn { reg } => sinkhorn_draw(&cost, rows.len(), *reg, rng),
            };
            // Data row rows[k] takes source row rows[chosen[k]].
            for (k, &c) in chosen.iter().enumerate() {
                let (Some(&dst), Some(&src)) = (rows.get(k), rows.get(c)) else {
                    continue;
                };
                if let (Some(d), Some(s)) = (
                    x0.get_mut(dst * dim..(dst + 1) * dim),
                    source.get(src * dim..(src + 1) * dim),
                ) {
                    d.copy_from_slice(s);
                }
            }
        }
        Ok(())
    }
}

/// Squared distances `C[k][m] = ‖x1[rows[k]] − x0[rows[m]]‖²`, flattened `(m, m)`:
/// rows index data points, columns source points.
fn cost_matrix(x0: &[f32], x1: &[f32], dim: usize, rows: &[usize]) -> Vec<f64> {
    let mut cost = Vec::with_capacity(rows.len() * rows.len());
    for &k in rows {
        let a = x1.get(k * dim..(k + 1) * dim).unwrap_or_default();
        for &m in rows {
            let b = x0.get(m * dim..(m + 1) * dim).unwrap_or_default();
            let d: f64 = a.iter().zip(b).map(|(p, q)| f64::from(p - q).powi(2)).sum();
            cost.push(d);
        }
    }
    cost
}

/// The optimal permutation: data row k takes source column `result[k]`.
fn assignment(cost: &[f64], m: usize) -> Result<Vec<usize>> {
    if m == 0 {
        return Ok(Vec::new());
    }
    let (rows, cols) = lsap::solve(m, m, &cost.to_vec(), false)
        .map_err(|e| Error::config(format!("the OT assignment failed: {e}")))?;
    let mut out = vec![0; m];
    for (r, c) in rows.into_iter().zip(cols) {
        if let Some(o) = out.get_mut(r) {
            *o = c;
        }
    }
    Ok(out)
}

/// The entropic OT plan between uniform marginals for `cost` (`(m, m)`, rows
/// = data), by log-domain Sinkhorn with ε = `reg` × the mean cost. Returns the
/// plan, row-major. Iterates until every marginal is within relative error
/// `tol` of 1/m (or 1000 iterations; small ε converges slowly).
pub fn sinkhorn_plan(cost: &[f64], m: usize, reg: f64, tol: f64) -> Vec<f64> {
    if m == 0 || cost.len() != m * m {
        return Vec::new();
    }
    let mean = cost.iter().sum::<f64>() / cost.len() as f64;
    let eps = (reg * mean).max(1e-12);
    let log_k: Vec<f64> = cost.iter().map(|c| -c / eps).collect();
    // The transpose, so that column sums also run over contiguous memory.
    let mut log_kt = vec![0.0; m * m];
    for (i, row) in log_k.chunks_exact(m).enumerate() {
        for (j, v) in row.iter().enumerate() {
            if let Some(t) = log_kt.get_mut(j * m + i) {
                *t = *v;
            }
        }
    }
    let log_marginal = -(m as f64).ln();
    let (mut f, mut g) = (vec![0.0f64; m], vec![0.0f64; m]);
    for _ in 0..SINKHORN_ITERS {
        for (fi, row) in f.iter_mut().zip(log_k.chunks_exact(m)) {
            *fi = log_marginal - log_sum_exp(row, &g);
        }
        let mut worst: f64 = 0.0;
        for (gj, col) in g.iter_mut().zip(log_kt.chunks_exact(m)) {
            let new = log_marginal - log_sum_exp(col, &f);
            // exp(g_old - g_new) is column j's mass (times m) before this update.
            worst = worst.max(((*gj - new).exp() - 1.0).abs());
            *gj = new;
        }
        if worst < tol {
            break;
        }
    }
    let mut plan = Vec::with_capacity(m * m);
    for (fi, row) in f.iter().zip(log_k.chunks_exact(m)) {
        plan.extend(row.iter().zip(&g).map(|(k, gj)| (fi + gj + k).exp()));
    }
    plan
}

/// `log Σ_j exp(a_j + b_j)`, stable for large magnitudes.
fn log_sum_exp(a: &[f64], b: &[f64]) -> f64 {
    let mx = a
        .iter()
        .zip(b)
        .map(|(x, y)| x + y)
        .fold(f64::NEG_INFINITY, f64::max);
    if !mx.is_finite() {
        return mx;
    }
    mx + a
        .iter()
        .zip(b)
        .map(|(x, y)| (x + y - mx).exp())
        .sum::<f64>()
        .ln()
}

/// For each data row, a source column drawn from its row of the Sinkhorn plan.
fn sinkhorn_draw(cost: &[f64], m: usize, reg: f64, rng: &mut StdRng) -> Vec<usize> {
    let plan = sinkhorn_plan(cost, m, reg, TRAIN_TOL);
    (0..m)
        .map(|i| {
            let row = plan.get(i * m..(i + 1) * m).unwrap_or_default();
            let total: f64 = row.iter().sum();
            let mut u = rng.random::<f64>() * total;
            for (j, p) in row.iter().enumerate() {
                u -= p;
                if u <= 0.0 {
                    return j;
                }
            }
            m.saturating_sub(1)
        })
        .collect()
}

/// Mean squared pair distance `(1/n) Σ ‖x0_i − x1_i‖²` of a batch (the
/// transport cost of its coupling).
pub fn pair_cost(x0: &[f32], x1: &[f32], dim: usize) -> f64 {
    let n = (x0.len() / dim.max(1)).max(1);
    x0.iter()
        .zip(x1)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        / n as f64
}
