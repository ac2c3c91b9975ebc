//! Property tests (proptest): paths, solvers, manifolds and tokens hold their
//! invariants on random inputs, not only on the hand-picked ones.

use candle_core::{Device, Tensor};
use flowlab::discrete::Tokenizer;
use flowlab::flow::{AffinePath, Manifold, Scheduler};
use flowlab::solver::{Integration, SolverConfig, SolverKind, integrate};
use proptest::prelude::*;

fn t2(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (v.len() / 2, 2), &Device::Cpu).expect("tensor")
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f64>())
        .expect("values")
}

fn schedulers() -> impl Strategy<Value = Scheduler> {
    prop_oneof![
        Just(Scheduler::CondOt),
        (0.3f64..4.0).prop_map(|n| Scheduler::Polynomial { n }),
        Just(Scheduler::LinearVp),
        Just(Scheduler::Cosine),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// x_t is the noise at t = 0 and the data at t = 1, and the velocity,
    /// x_1-prediction and noise-prediction parametrisations convert losslessly.
    #[test]
    fn paths_hit_their_ends_and_parametrisations_round_trip(
        s in schedulers(),
        x0 in prop::collection::vec(-3.0f64..3.0, 8),
        x1 in prop::collection::vec(-3.0f64..3.0, 8),
        t in 0.05f64..0.95,
    ) {
        let path = AffinePath::new(s);
        let (a, b) = (t2(&x0), t2(&x1));
        let ends = path.sample(&a, &b, &[0.0; 4]).expect("t = 0");
        for (u, v) in vals(&ends.x_t).iter().zip(&x0) {
            prop_assert!((u - v).abs() < 1e-9);
        }
        let ends = path.sample(&a, &b, &[1.0; 4]).expect("t = 1");
        for (u, v) in vals(&ends.x_t).iter().zip(&x1) {
            prop_assert!((u - v).abs() < 1e-9);
        }
        let ts = [t; 4];
        let ps = path.sample(&a, &b, &ts).expect("path");
        let x1_hat = path.velocity_to_target(&ps.dx_t, &ps.x_t, &ts).expect("to x1");
        for (u, v) in vals(&x1_hat).iter().zip(&x1) {
            prop_assert!((u - v).abs() < 1e-6, "x1 {u} vs {v}");
        }
        let eps = path.velocity_to_epsilon(&ps.dx_t, &ps.x_t, &ts).expect("to eps");
        for (u, v) in vals(&eps).iter().zip(&x0) {
            prop_assert!((u - v).abs() < 1e-6, "eps {u} vs {v}");
        }
        let back = path.epsilon_to_velocity(&eps, &ps.x_t, &ts).expect("back");
        for (u, v) in vals(&back).iter().zip(vals(&ps.dx_t)) {
            prop_assert!((u - v).abs() < 1e-6);
        }
    }

    /// On dx/dt = a x every solver converges to x_0 e^a, RK4 to 1e-6 with 64 steps,
    /// and halving Euler's step roughly halves its error.
    #[test]
    fn solvers_follow_a_random_linear_ode(
        a in -2.0f64..2.0,
        x0 in prop::collection::vec(-2.0f64..2.0, 4),
    ) {
        let field = move |x: &Tensor, _t: &Tensor| -> flowlab::Result<Tensor> { Ok(x.affine(a, 0.0)?) };
        let x = t2(&x0);
        let exact: Vec<f64> = x0.iter().map(|v| v * a.exp()).collect();
        let err = |cfg: SolverConfig| {
            let sol = integrate(&field, &x, &cfg, &Integration::forward()).expect("integrate");
            vals(&sol.x).iter().zip(&exact).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max)
        };
        prop_assert!(err(SolverConfig::fixed(SolverKind::Rk4, 64)) < 1e-6);
        prop_assert!(err(SolverConfig::fixed(SolverKind::Midpoint, 256)) < 1e-3);
        prop_assert!(err(SolverConfig::dopri5(1e-8, 1e-8)) < 1e-6);
        let (e1, e2) = (
            err(SolverConfig::fixed(SolverKind::Euler, 200)),
            err(SolverConfig::fixed(SolverKind::Euler, 400)),
        );
        prop_assert!(e2 <= 0.6 * e1 + 1e-12, "Euler {e1} -> {e2}");
        // Backwards from the end returns to the start.
        let there = integrate(&field, &x, &SolverConfig::fixed(SolverKind::Rk4, 32), &Integration::forward()).expect("fwd");
        let back = integrate(&field, &there.x, &SolverConfig::fixed(SolverKind::Rk4, 32), &Integration::backward()).expect("bwd");
        for (u, v) in vals(&back.x).iter().zip(&x0) {
            prop_assert!((u - v).abs() < 1e-6);
        }
    }

    /// On both manifolds: exp(log) returns the point, geodesics keep their
    /// constant speed, and every point stays on the manifold.
    #[test]
    fn manifold_maps_hold_on_random_points(
        sphere in any::<bool>(),
        p in prop::collection::vec(-1.0f64..1.0, 4),
        q in prop::collection::vec(-1.0f64..1.0, 4),
        t in 0.0f64..1.0,
    ) {
        let m = if sphere { Manifold::Sphere } else { Manifold::Torus };
        let d = m.ambient_dim();
        prop_assume!(p.iter().take(d).map(|v| v.abs()).sum::<f64>() > 0.1);
        prop_assume!(q.iter().take(d).map(|v| v.abs()).sum::<f64>() > 0.1);
        let x = m.project_point(&p[..d]);
        let y = m.project_point(&q[..d]);
        // Away from the cut locus (antipodes), where the shortest path is unique.
        prop_assume!(m.distance(&x, &y) < 0.95 * std::f64::consts::PI);
        let v = m.log(&x, &y);
        let back = m.exp(&x, &v);
        prop_assert!(m.distance(&back, &y) < 1e-7);
        let g = m.geodesic(&x, &y, t);
        prop_assert!((m.distance(&x, &g) - t * m.distance(&x, &y)).abs() < 1e-7);
        let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        prop_assert!(m.max_off_manifold(&g32) < 1e-6);
    }

    /// Every token names a value that maps back to it.
    #[test]
    fn tokens_round_trip(levels in 2usize..300, image in any::<bool>()) {
        let tok = if image { Tokenizer::grey_levels(levels) } else { Tokenizer::bins_2d(levels) };
        for k in 0..levels as u32 {
            prop_assert_eq!(tok.token(tok.value(k)), k);
        }
    }
}

/// Seeded values in [-1, 1) for a tensor of `shape` (f32).
fn random_f32(shape: &[usize], seed: u64) -> Tensor {
    use rand::{RngExt as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = vals(&a.to_dtype(candle_core::DType::F64).expect("f64"));
    let b = vals(&b.to_dtype(candle_core::DType::F64).expect("f64"));
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Winograd's convolution (3x3, stride 1, channels multiples of 16) equals
    /// the direct one in f64, forward and all three gradients (the input
    /// gradient against a transposed convolution, the kernel and bias gradients
    /// against candle's autograd), for random sizes, paddings and batches.
    #[test]
    fn winograd_convolution_matches_the_direct_one(
        batch in 1usize..5,
        c_in in prop::sample::select(vec![16usize, 32, 48]),
        c_out in prop::sample::select(vec![16usize, 32]),
        h in 1usize..13,
        w in 1usize..13,
        pad in 0usize..3,
        seed in any::<u64>(),
    ) {
        use flowlab::model::ops::{Conv2dParams, conv2d, conv2d_backward, uses_winograd};
        prop_assume!(h + 2 * pad >= 3 && w + 2 * pad >= 3);
        let p = Conv2dParams::same(pad);
        prop_assert!(uses_winograd(&[batch, c_in, h, w], &[c_out, c_in, 3, 3], p));
        let x = random_f32(&[batch, c_in, h, w], seed);
        let k = random_f32(&[c_out, c_in, 3, 3], seed ^ 1);
        let b = random_f32(&[c_out], seed ^ 2);
        let f64_of = |t: &Tensor| t.to_dtype(candle_core::DType::F64).expect("f64");
        let y = conv2d(&x, &k, Some(&b), p).expect("ours");
        let reference = f64_of(&x)
            .conv2d(&f64_of(&k), pad, 1, 1, 1)
            .and_then(|y| y.broadcast_add(&f64_of(&b).reshape((1, c_out, 1, 1))?))
            .expect("direct");
        prop_assert!(max_rel_err(&y, &reference) < 1e-5, "forward {:e}", max_rel_err(&y, &reference));
        let gy = random_f32(y.dims(), seed ^ 3);
        let (dx, dk, db) = conv2d_backward(&x, &k, &gy, p).expect("backward");
        // Kernel and bias gradients against candle's autograd in f64.
        let kv = candle_core::Var::from_tensor(&f64_of(&k)).expect("var");
        let loss = f64_of(&x)
            .conv2d(kv.as_tensor(), pad, 1, 1, 1)
            .and_then(|y| (y * f64_of(&gy))?.sum_all())
            .expect("loss");
        let grads = loss.backward().expect("backward");
        let dk_ref = grads.get(kv.as_tensor()).expect("kernel gradient");
        prop_assert!(max_rel_err(&dk, dk_ref) < 1e-5, "kernel gradient {:e}", max_rel_err(&dk, dk_ref));
        let db_ref = f64_of(&gy).sum((0, 2, 3)).expect("bias gradient");
        prop_assert!(max_rel_err(&db, &db_ref) < 1e-5, "bias gradient {:e}", max_rel_err(&db, &db_ref));
        let dx_ref = f64_of(&gy)
            .conv_transpose2d(&f64_of(&k), pad, 0, 1, 1)
            .expect("transposed");
        prop_assert_eq!(dx.dims(), dx_ref.dims());
        prop_assert!(max_rel_err(&dx, &dx_ref) < 1e-5, "input gradient {:e}", max_rel_err(&dx, &dx_ref));
    }
}
