//! ODE solvers against analytic solutions.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;

use candle_core::Tensor;
use flowlab::model::VelocityField;
use flowlab::solver::{Integration, SolverConfig, SolverKind, integrate};

use crate::common::{max_diff, t64, vals};

/// dx/dt = t x, so x(t) = x(0) exp(t²/2).
fn linear_in_t(x: &Tensor, t: &Tensor) -> flowlab::Result<Tensor> {
    Ok(x.broadcast_mul(&t.unsqueeze(1)?)?)
}

fn x0() -> Tensor {
    t64(vec![1.0, -0.5, 2.0, 0.25], 2, 2)
}

fn error_at_1(kind: SolverKind, steps: usize) -> f64 {
    let sol = integrate(
        &linear_in_t,
        &x0(),
        &SolverConfig::fixed(kind, steps),
        &Integration::forward(),
    )
    .expect("integrate");
    let exact = x0().affine(0.5f64.exp(), 0.0).expect("exact");
    max_diff(&sol.x, &exact)
}

#[test]
fn fixed_step_methods_show_their_convergence_order() {
    for (kind, n, expected) in [
        (SolverKind::Euler, 64, 1.0),
        (SolverKind::Midpoint, 32, 2.0),
        (SolverKind::Heun, 32, 2.0),
        (SolverKind::Rk4, 8, 4.0),
    ] {
        let (e1, e2) = (error_at_1(kind, n), error_at_1(kind, 2 * n));
        let order = (e1 / e2).log2();
        assert!(
            (order - expected).abs() < 0.15,
            "{kind:?}: observed order {order:.3} (errors {e1:e}, {e2:e})"
        );
    }
}

#[test]
fn nfe_is_counted_and_times_follow_the_exact_grid() {
    for kind in [
        SolverKind::Euler,
        SolverKind::Midpoint,
        SolverKind::Heun,
        SolverKind::Rk4,
    ] {
        let seen = RefCell::new(Vec::new());
        let field = |x: &Tensor, t: &Tensor| -> flowlab::Result<Tensor> {
            seen.borrow_mut().push(vals(t)[0]);
            linear_in_t(x, t)
        };
        let n = 10;
        let sol = integrate(
            &field,
            &x0(),
            &SolverConfig::fixed(kind, n),
            &Integration::forward().with_intermediates(),
        )
        .expect("integrate");
        let per = kind.nfe_per_step().expect("fixed");
        assert_eq!(sol.nfe, per * n, "{kind:?} NFE");
        assert_eq!(seen.borrow().len(), sol.nfe);
        // Kept times are exactly k/N, the first state is the start, the last is the result.
        let expected: Vec<f64> = (0..=n).map(|k| k as f64 / n as f64).collect();
        assert_eq!(sol.times, expected, "{kind:?} times");
        assert_eq!(sol.states.len(), n + 1);
        assert_eq!(max_diff(&sol.states[0], &x0()), 0.0);
        assert_eq!(max_diff(&sol.states[n], &sol.x), 0.0);
        // Every step starts by evaluating the field exactly at t_k = k/N.
        let seen = seen.borrow();
        for k in 0..n {
            assert_eq!(
                seen[k * per],
                k as f64 / n as f64,
                "{kind:?} step {k} start time"
            );
        }
        let max_t = seen.iter().copied().fold(0.0, f64::max);
        assert!(max_t <= 1.0, "{kind:?} evaluated beyond t=1: {max_t}");
    }
}

/// dx/dt = a(t) x with a sharp Lorentzian pulse a(t) = A / (1 + ((t − c)/w)²):
/// x(t) = x(0) exp(A w (atan((t − c)/w) + atan(c/w))).
struct Pulse {
    a: f64,
    c: f64,
    w: f64,
}

impl Pulse {
    fn exact(&self, x0: &Tensor, t: f64) -> Tensor {
        let g = self.a * self.w * (((t - self.c) / self.w).atan() + (self.c / self.w).atan());
        x0.affine(g.exp(), 0.0).expect("exact")
    }
}

impl VelocityField for Pulse {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> flowlab::Result<Tensor> {
        let tv = vals(t);
        let rate: Vec<f64> = tv
            .iter()
            .map(|t| self.a / (1.0 + ((t - self.c) / self.w).powi(2)))
            .collect();
        let rate = Tensor::from_vec(rate, (tv.len(), 1), x.device())?;
        Ok(x.broadcast_mul(&rate)?)
    }
}

#[test]
fn dopri5_meets_its_tolerance_with_fewer_evaluations_than_rk4() {
    let field = Pulse {
        a: 50.0,
        c: 0.3,
        w: 0.01,
    };
    let exact = field.exact(&x0(), 1.0);
    let sol = integrate(
        &field,
        &x0(),
        &SolverConfig::dopri5(1e-6, 1e-6),
        &Integration::forward(),
    )
    .expect("dopri5");
    let err = max_diff(&sol.x, &exact) / vals(&exact).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(err < 1e-4, "dopri5 relative error {err:e} at rtol 1e-6");
    assert!(
        sol.rejected > 0 || sol.steps > 10,
        "dopri5 should adapt its steps"
    );
    // The smallest RK4 grid reaching the same error needs more evaluations.
    let mut rk4_nfe = None;
    for n in (2..=14).map(|p| 1usize << p) {
        let r = integrate(
            &field,
            &x0(),
            &SolverConfig::fixed(SolverKind::Rk4, n),
            &Integration::forward(),
        )
        .expect("rk4");
        let e = max_diff(&r.x, &exact) / vals(&exact).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if e <= err {
            rk4_nfe = Some(r.nfe);
            break;
        }
    }
    let rk4_nfe = rk4_nfe.expect("RK4 reaches the error within 16384 steps");
    assert!(
        sol.nfe < rk4_nfe,
        "dopri5 NFE {} vs RK4 NFE {rk4_nfe} at error {err:e}",
        sol.nfe
    );
}

#[test]
fn dopri5_error_shrinks_with_tolerance() {
    let exact = x0().affine(0.5f64.exp(), 0.0).expect("exact");
    let mut last = f64::INFINITY;
    for tol in [1e-3, 1e-6, 1e-9] {
        let sol = integrate(
            &linear_in_t,
            &x0(),
            &SolverConfig::dopri5(tol, tol),
            &Integration::forward(),
        )
        .expect("dopri5");
        let err = max_diff(&sol.x, &exact);
        assert!(err < 10.0 * tol * 3.0, "tol {tol:e}: error {err:e}");
        assert!(err < last);
        last = err;
    }
}

#[test]
fn integrating_forward_then_backward_returns_the_start() {
    // A nonlinear, time-dependent field.
    let field = |x: &Tensor, t: &Tensor| -> flowlab::Result<Tensor> {
        let tt = t.unsqueeze(1)?.affine(1.0, 1.0)?;
        Ok((x.sin()?.broadcast_mul(&tt)? + x.affine(-0.3, 0.0)?)?)
    };
    for cfg in [
        SolverConfig::fixed(SolverKind::Rk4, 200),
        SolverConfig::dopri5(1e-10, 1e-10),
    ] {
        let fwd = integrate(&field, &x0(), &cfg, &Integration::forward()).expect("forward");
        assert!(
            max_diff(&fwd.x, &x0()) > 0.1,
            "the field must move the points"
        );
        let back = integrate(&field, &fwd.x, &cfg, &Integration::backward()).expect("backward");
        assert!(
            max_diff(&back.x, &x0()) < 1e-7,
            "{cfg:?}: 0->1->0 error {}",
            max_diff(&back.x, &x0())
        );
    }
}

#[test]
fn backward_integration_matches_the_analytic_solution() {
    let x1 = x0().affine(0.5f64.exp(), 0.0).expect("x1");
    for cfg in [
        SolverConfig::fixed(SolverKind::Rk4, 50),
        SolverConfig::dopri5(1e-9, 1e-9),
    ] {
        let sol = integrate(
            &linear_in_t,
            &x1,
            &cfg,
            &Integration::backward().with_intermediates(),
        )
        .expect("backward");
        assert!(max_diff(&sol.x, &x0()) < 1e-8, "{cfg:?}");
        assert_eq!(sol.times.first(), Some(&1.0));
        assert_eq!(sol.times.last(), Some(&0.0));
        assert!(sol.times.windows(2).all(|w| w[1] < w[0]), "times decrease");
    }
}

#[test]
fn a_stop_flag_interrupts_integration() {
    let stop = AtomicBool::new(true);
    let how = Integration {
        stop: Some(&stop),
        ..Integration::forward()
    };
    for cfg in [
        SolverConfig::fixed(SolverKind::Euler, 10),
        SolverConfig::dopri5(1e-5, 1e-5),
    ] {
        let r = integrate(&linear_in_t, &x0(), &cfg, &how);
        assert!(
            matches!(r, Err(flowlab::Error::Interrupted)),
            "{cfg:?}: {r:?}"
        );
    }
}

#[test]
fn invalid_solver_settings_are_rejected() {
    for cfg in [
        SolverConfig::fixed(SolverKind::Euler, 0),
        SolverConfig::dopri5(0.0, 1e-5),
        SolverConfig::dopri5(1e-5, f64::NAN),
    ] {
        let r = integrate(&linear_in_t, &x0(), &cfg, &Integration::forward());
        assert!(
            matches!(r, Err(flowlab::Error::Config(_))),
            "{cfg:?}: {r:?}"
        );
    }
}
