//! Schedulers, paths, conversions and time sampling.

use flowlab::flow::{AffinePath, Scheduler, TimeSampling};
use flowlab::rng::{Stream, stream_rng};

use crate::common::{max_diff, t64};

const SCHEDULERS: [Scheduler; 6] = [
    Scheduler::CondOt,
    Scheduler::Polynomial { n: 2.0 },
    Scheduler::Polynomial { n: 3.5 },
    Scheduler::VP_DEFAULT,
    Scheduler::LinearVp,
    Scheduler::Cosine,
];

#[test]
fn scheduler_derivatives_match_finite_differences() {
    let h = 1e-6;
    for s in SCHEDULERS {
        for i in 1..50 {
            let t = i as f64 / 50.0;
            let o = s.eval(t);
            let (p, m) = (s.eval(t + h), s.eval(t - h));
            let fd_alpha = (p.alpha - m.alpha) / (2.0 * h);
            let fd_sigma = (p.sigma - m.sigma) / (2.0 * h);
            let tol = |v: f64| 1e-5 * (1.0 + v.abs());
            assert!(
                (o.d_alpha - fd_alpha).abs() < tol(fd_alpha),
                "{s:?} d_alpha at t={t}: {} vs {fd_alpha}",
                o.d_alpha
            );
            assert!(
                (o.d_sigma - fd_sigma).abs() < tol(fd_sigma),
                "{s:?} d_sigma at t={t}: {} vs {fd_sigma}",
                o.d_sigma
            );
        }
    }
}

#[test]
fn schedulers_go_from_noise_at_0_to_data_at_1() {
    for s in SCHEDULERS {
        let (o0, o1) = (s.eval(0.0), s.eval(1.0));
        assert!(
            (o1.alpha - 1.0).abs() < 1e-12 && o1.sigma.abs() < 1e-12,
            "{s:?} at t=1: {o1:?}"
        );
        if matches!(s, Scheduler::Vp { .. }) {
            // VP only approaches pure noise: alpha_0 = exp(-T(0)/2) with T(0) = 10.05.
            assert!(
                o0.alpha < 0.01 && (o0.sigma - 1.0).abs() < 1e-4,
                "{s:?} at t=0: {o0:?}"
            );
        } else {
            assert!(
                o0.alpha.abs() < 1e-12 && (o0.sigma - 1.0).abs() < 1e-12,
                "{s:?} at t=0: {o0:?}"
            );
        }
    }
}

#[test]
fn time_convention_is_noise_at_0_and_data_at_1() {
    let path = AffinePath::new(Scheduler::CondOt);
    let x0 = t64(vec![1.0, 2.0, 3.0, 4.0], 2, 2);
    let x1 = t64(vec![-5.0, 6.0, 7.0, -8.0], 2, 2);
    let at0 = path.sample(&x0, &x1, &[0.0, 0.0]).expect("sample");
    let at1 = path.sample(&x0, &x1, &[1.0, 1.0]).expect("sample");
    assert_eq!(max_diff(&at0.x_t, &x0), 0.0);
    assert_eq!(max_diff(&at1.x_t, &x1), 0.0);
    // CondOT velocity is x1 - x0 at every t.
    let mid = path.sample(&x0, &x1, &[0.3, 0.8]).expect("sample");
    assert!(max_diff(&mid.dx_t, &(&x1 - &x0).expect("sub")) < 1e-12);
}

#[test]
fn conversions_round_trip_and_agree_with_the_path() {
    let n = 64;
    let mut rng = stream_rng(7, Stream::Eval, 0);
    let x0 = t64(
        flowlab::rng::gaussian(2 * n, &mut rng)
            .into_iter()
            .map(f64::from)
            .collect(),
        n,
        2,
    );
    let x1 = t64(
        flowlab::rng::gaussian(2 * n, &mut rng)
            .into_iter()
            .map(f64::from)
            .collect(),
        n,
        2,
    );
    let t: Vec<f64> = (0..n)
        .map(|i| 0.02 + 0.96 * i as f64 / (n - 1) as f64)
        .collect();
    for s in SCHEDULERS {
        let path = AffinePath::new(s);
        let ps = path.sample(&x0, &x1, &t).expect("sample");
        let v = ps.dx_t.clone();
        // From the true x1 / x0 the conversions give the path's own velocity.
        let v_from_x1 = path.target_to_velocity(&x1, &ps.x_t, &t).expect("conv");
        let v_from_eps = path.epsilon_to_velocity(&x0, &ps.x_t, &t).expect("conv");
        assert!(max_diff(&v_from_x1, &v) < 1e-8, "{s:?} x1->v");
        assert!(max_diff(&v_from_eps, &v) < 1e-6, "{s:?} eps->v");
        // And back.
        assert!(
            max_diff(
                &path.velocity_to_target(&v, &ps.x_t, &t).expect("conv"),
                &x1
            ) < 1e-8,
            "{s:?} v->x1"
        );
        assert!(
            max_diff(
                &path.velocity_to_epsilon(&v, &ps.x_t, &t).expect("conv"),
                &x0
            ) < 1e-6,
            "{s:?} v->eps"
        );
        assert!(
            max_diff(
                &path.target_to_epsilon(&x1, &ps.x_t, &t).expect("conv"),
                &x0
            ) < 1e-8,
            "{s:?} x1->eps"
        );
        assert!(
            max_diff(
                &path.epsilon_to_target(&x0, &ps.x_t, &t).expect("conv"),
                &x1
            ) < 1e-6,
            "{s:?} eps->x1"
        );
    }
}

#[test]
fn time_sampling_stays_in_range_and_logit_normal_concentrates_mid_path() {
    let mut rng = stream_rng(1, Stream::Batch, 0);
    let n = 20_000;
    let uni: Vec<f64> = (0..n)
        .map(|_| TimeSampling::Uniform.draw(1.0, &mut rng))
        .collect();
    let ln: Vec<f64> = (0..n)
        .map(|_| TimeSampling::LOGIT_NORMAL.draw(1.0, &mut rng))
        .collect();
    assert!(uni.iter().chain(&ln).all(|t| (0.0..=1.0).contains(t)));
    let mid = |v: &[f64]| v.iter().filter(|t| (0.25..0.75).contains(*t)).count() as f64 / n as f64;
    assert!(
        (mid(&uni) - 0.5).abs() < 0.02,
        "uniform mid mass {}",
        mid(&uni)
    );
    // For sigmoid(N(0,1)) the mass in [0.25, 0.75] is P(|z| < ln 3) = 0.728.
    assert!(
        (mid(&ln) - 0.728).abs() < 0.02,
        "logit-normal mid mass {}",
        mid(&ln)
    );
    let capped = TimeSampling::Uniform.draw(0.5, &mut rng);
    assert!(capped <= 0.5);
}

/// A field trained for CondOT, sampled as if trained for another scheduler:
/// the marginals follow the new scheduler, checked against the closed form
/// for a Gaussian target N(mu, s^2 I): x_r ~ N(alpha_r mu, (sigma_r^2 + alpha_r^2 s^2) I).
#[test]
fn scheduler_change_gives_the_new_schedulers_marginals() {
    use candle_core::{Device, Tensor};
    use flowlab::flow::{Scheduler, SchedulerChange};
    use flowlab::solver::{Integration, SolverConfig, SolverKind, integrate};
    let (mu, s) = ([1.5f32, -0.5f32], 0.4f32);
    // The exact CondOT marginal velocity towards N(mu, s^2 I).
    let condot = move |x: &Tensor, t: &Tensor| -> flowlab::Result<Tensor> {
        let n = x.dim(0)?;
        let tc = t.reshape((n, 1))?;
        let mu_t = Tensor::from_vec(mu.to_vec(), (1, 2), x.device())?;
        let var = (tc.affine(-1.0, 1.0)?.sqr()? + (tc.sqr()? * f64::from(s * s))?)?;
        let rate = ((&tc * f64::from(s * s))? - tc.affine(-1.0, 1.0)?)?.div(&var)?;
        let centred = x.broadcast_sub(&tc.broadcast_mul(&mu_t)?)?;
        Ok(centred.broadcast_mul(&rate)?.broadcast_add(&mu_t)?)
    };
    let n = 20_000;
    let x0 = flowlab::rng::noise(n, &[2], 4, 0, &Device::Cpu).expect("noise");
    for target in [
        Scheduler::Cosine,
        Scheduler::LinearVp,
        Scheduler::Polynomial { n: 2.0 },
    ] {
        let changed = SchedulerChange::new(&condot, Scheduler::CondOt, target);
        for r_end in [0.5, 1.0] {
            let how = Integration {
                t0: 0.0,
                t1: r_end,
                ..Integration::forward()
            };
            let sol = integrate(
                &changed,
                &x0,
                &SolverConfig::fixed(SolverKind::Rk4, 100),
                &how,
            )
            .expect("integrate");
            let v: Vec<f32> = sol.x.flatten_all().unwrap().to_vec1().unwrap();
            let o = target.eval(r_end);
            let want_var = o.sigma * o.sigma + o.alpha * o.alpha * f64::from(s * s);
            for (d, &mu_d) in mu.iter().enumerate() {
                let xs: Vec<f64> = v.iter().skip(d).step_by(2).map(|&a| f64::from(a)).collect();
                let mean = xs.iter().sum::<f64>() / n as f64;
                let var = xs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n as f64;
                let want_mean = o.alpha * f64::from(mu_d);
                assert!(
                    (mean - want_mean).abs() < 0.03,
                    "{target:?} r={r_end} dim {d}: mean {mean:.4} vs {want_mean:.4}"
                );
                assert!(
                    (var / want_var - 1.0).abs() < 0.05,
                    "{target:?} r={r_end} dim {d}: var {var:.4} vs {want_var:.4}"
                );
            }
        }
    }
}
