//! Likelihoods against closed forms: the exact marginal velocity of the CondOT
//! path from N(0, I) to a Gaussian mixture gives a flow whose density at t = 1
//! is the mixture's, known exactly.

use candle_core::{Device, Tensor};
use flowlab::solver::likelihood::{
    Divergence, LikelihoodConfig, log_likelihood, velocity_and_divergence,
};

/// A 2D Gaussian mixture: (weight, mean, std) per component.
const MIX: [(f64, [f64; 2], f64); 3] = [
    (0.5, [2.0, 0.0], 0.3),
    (0.3, [-1.0, 1.5], 0.5),
    (0.2, [-1.0, -1.5], 0.4),
];

/// The marginal velocity of x_t = t x_1 + (1 − t) x_0, x_0 ~ N(0, I), x_1 ~ MIX:
/// Σ_k p(k | x_t) [μ_k + (t s_k² − (1 − t)) / σ_k² (x − t μ_k)], σ_k² = (1 − t)² + t² s_k².
fn mixture_field(x: &Tensor, t: &Tensor) -> flowlab::Result<Tensor> {
    let n = x.dim(0)?;
    let t = t.reshape((n, 1))?;
    let one_minus = t.affine(-1.0, 1.0)?;
    let mut logits = Vec::new();
    let mut fields = Vec::new();
    for (w, mu, s) in MIX {
        let mu_t = Tensor::from_vec(vec![mu[0] as f32, mu[1] as f32], (1, 2), x.device())?;
        let centre = t.broadcast_mul(&mu_t)?;
        let var = (one_minus.sqr()? + (t.sqr()? * (s * s))?)?;
        let diff = (x - centre)?;
        let sq = diff.sqr()?.sum_keepdim(1)?;
        // log w - |x - t mu|^2 / (2 var) - log(2 pi var)
        let logit = ((sq / (&var * 2.0)?)?.neg()?
            - (var.log()? + (2.0 * std::f64::consts::PI).ln())?)?
        .affine(1.0, w.ln())?;
        let rate = ((&t * (s * s))? - &one_minus)?.div(&var)?;
        let v = diff.broadcast_mul(&rate)?.broadcast_add(&mu_t)?;
        logits.push(logit);
        fields.push(v);
    }
    let logits = Tensor::cat(&logits, 1)?;
    let max = logits.max_keepdim(1)?;
    let e = logits.broadcast_sub(&max)?.exp()?;
    let post = e.broadcast_div(&e.sum_keepdim(1)?)?;
    let mut v = Tensor::zeros((n, 2), x.dtype(), x.device())?;
    for (k, f) in fields.iter().enumerate() {
        v = (v + f.broadcast_mul(&post.narrow(1, k, 1)?)?)?;
    }
    Ok(v)
}

fn mixture_log_density(p: [f64; 2]) -> f64 {
    MIX.iter()
        .map(|(w, mu, s)| {
            let d2 = (p[0] - mu[0]).powi(2) + (p[1] - mu[1]).powi(2);
            w * (-d2 / (2.0 * s * s)).exp() / (2.0 * std::f64::consts::PI * s * s)
        })
        .sum::<f64>()
        .ln()
}

fn points() -> Vec<[f64; 2]> {
    vec![
        [2.0, 0.0],
        [2.3, -0.2],
        [-1.0, 1.5],
        [-0.6, 1.1],
        [-1.2, -1.4],
        [0.5, 0.0],
        [1.6, 0.4],
        [-1.0, 0.0],
    ]
}

#[test]
fn likelihood_of_a_flow_to_a_gaussian_mixture_matches_its_density() {
    let pts = points();
    let flat: Vec<f32> = pts
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    let x = Tensor::from_vec(flat, (pts.len(), 2), &Device::Cpu).expect("x");
    let cfg = LikelihoodConfig {
        steps: 40,
        ..Default::default()
    };
    let got = log_likelihood(&mixture_field, &x, &cfg).expect("likelihood");
    assert_eq!(got.nfe, 160);
    for (p, lp) in pts.iter().zip(&got.log_p) {
        let want = mixture_log_density(*p);
        // Stated tolerance: 0.01 nats with 40 RK4 steps.
        assert!((lp - want).abs() < 0.01, "at {p:?}: {lp:.4} vs {want:.4}");
    }
    // Hutchinson's estimate (64 probes) lands close to the exact answer.
    let hutch = log_likelihood(
        &mixture_field,
        &x,
        &LikelihoodConfig {
            steps: 40,
            divergence: Divergence::Hutchinson { probes: 64 },
            seed: 3,
        },
    )
    .expect("likelihood");
    for (a, b) in hutch.log_p.iter().zip(&got.log_p) {
        assert!((a - b).abs() < 0.1, "Hutchinson {a:.4} vs exact {b:.4}");
    }
}

#[test]
fn exact_divergence_matches_finite_differences_and_hutchinson_is_unbiased() {
    // Points between components, where the posterior weights (and so the
    // off-diagonal Jacobian that Hutchinson's estimate is noisy on) vary.
    let pts = [[0.5f32, 0.75], [0.4, -0.7], [-1.0, 0.0]];
    let flat: Vec<f32> = pts.iter().flatten().copied().collect();
    let x = Tensor::from_vec(flat.clone(), (3, 2), &Device::Cpu).expect("x");
    let t = Tensor::full(0.6f32, 3, &Device::Cpu).expect("t");
    let (_, exact) =
        velocity_and_divergence(&mixture_field, &x, &t, Divergence::Exact, &[]).expect("div");
    let exact: Vec<f32> = exact.to_vec1().expect("vec");
    // Central differences in f64 arithmetic on the f32 field.
    let v_at = |p: [f32; 2]| -> [f64; 2] {
        let x = Tensor::from_vec(p.to_vec(), (1, 2), &Device::Cpu).expect("x");
        let t = Tensor::full(0.6f32, 1, &Device::Cpu).expect("t");
        let v: Vec<f32> = mixture_field(&x, &t)
            .expect("v")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        [f64::from(v[0]), f64::from(v[1])]
    };
    let h = 2e-3f32;
    for (p, d) in pts.iter().zip(&exact) {
        let fd = (v_at([p[0] + h, p[1]])[0] - v_at([p[0] - h, p[1]])[0]
            + v_at([p[0], p[1] + h])[1]
            - v_at([p[0], p[1] - h])[1])
            / (2.0 * f64::from(h));
        assert!(
            (f64::from(*d) - fd).abs() < 1e-3 * fd.abs().max(1.0),
            "{d} vs {fd}"
        );
    }
    // Hutchinson: single-probe estimates scatter around the exact value.
    let mut rng = flowlab::rng::stream_rng(1, flowlab::rng::Stream::Eval, 0);
    let k = 400;
    let mut est = vec![Vec::new(); 3];
    for _ in 0..k {
        use rand::RngExt as _;
        let e: Vec<f32> = (0..6)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        let probe = Tensor::from_vec(e, (3, 2), &Device::Cpu).expect("probe");
        let (_, d) = velocity_and_divergence(
            &mixture_field,
            &x,
            &t,
            Divergence::Hutchinson { probes: 1 },
            &[probe],
        )
        .expect("div");
        for (i, v) in d.to_vec1::<f32>().expect("vec").into_iter().enumerate() {
            est[i].push(f64::from(v));
        }
    }
    let mut varied = 0;
    for (e, d) in est.iter().zip(&exact) {
        let mean = e.iter().sum::<f64>() / k as f64;
        let sd = (e.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        if sd > 1e-2 {
            varied += 1;
        }
        let se = sd / (k as f64).sqrt();
        assert!(
            (mean - f64::from(*d)).abs() < 4.0 * se + 1e-4,
            "mean {mean} vs exact {d} (se {se})"
        );
    }
    assert!(varied >= 2, "the single-probe estimates do scatter");
}
