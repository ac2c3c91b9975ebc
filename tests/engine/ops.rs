//! FlowLab's CPU kernels against candle's reference ops (values and gradients on
//! odd shapes, strides, padding, dilation and batch 1) and against finite
//! differences.

use candle_core::{DType, Device, Tensor, Var};
use flowlab::model::ops::{
    Conv2dParams, GroupNormParams, conv2d, group_norm, upsample_nearest, uses_winograd,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common::{vals, weighted_sum_grads};

/// A variable of uniform values in [-1, 1).
fn var(shape: &[usize], seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Var::from_vec(v, shape, &Device::Cpu).expect("var")
}

/// An f64 copy of a variable that passes gradients back to it.
fn f64_of(v: &Var) -> Tensor {
    v.as_tensor().to_dtype(DType::F64).expect("to f64")
}

/// Back to f32 at the end of a reference computation.
fn f32_of(t: Tensor) -> Tensor {
    t.to_dtype(DType::F32).expect("to f32")
}

/// max |a − b| / max(|b|, floor): relative error against the reference `b`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (vals(a), vals(b));
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Compares `ours(vars)` with `reference(vars)` in value and in the gradient of a
/// fixed weighted sum, for every variable. The reference computes in f64 (see
/// [`f64_of`]), so the error measured is ours.
fn check_against(
    label: &str,
    vars: &[&Var],
    ours: impl Fn() -> Tensor,
    reference: impl Fn() -> Tensor,
) {
    let (y, r) = (ours(), reference());
    assert_eq!(y.dims(), r.dims(), "{label}: shape");
    let e = rel_err(&y, &r);
    assert!(e < 1e-4, "{label}: value error {e:e}");
    let w = var(y.dims(), 99);
    let (g1, g2) = (
        weighted_sum_grads(&y, w.as_tensor()),
        weighted_sum_grads(&r, w.as_tensor()),
    );
    for (i, v) in vars.iter().enumerate() {
        let a = g1.get(v.as_tensor()).expect("our gradient");
        let b = g2.get(v.as_tensor()).expect("reference gradient");
        let e = rel_err(a, b);
        assert!(e < 1e-4, "{label}: gradient {i} error {e:e}");
    }
}

#[test]
fn conv2d_matches_candle_in_value_and_gradient() {
    // (batch, c_in, h, w, c_out, k, stride, padding, dilation)
    let cases = [
        (1, 1, 5, 5, 1, 3, 1, 1, 1),
        (2, 3, 7, 6, 4, 3, 1, 1, 1),
        (3, 5, 9, 8, 6, 3, 2, 1, 1),
        (2, 4, 8, 8, 3, 3, 2, 0, 1),
        (1, 2, 6, 7, 3, 1, 1, 0, 1),
        (2, 3, 10, 9, 2, 3, 1, 2, 2),
        (9, 8, 5, 5, 16, 3, 1, 0, 1),
        (4, 3, 11, 11, 5, 4, 2, 1, 1),
        (2, 3, 6, 6, 4, 1, 2, 1, 1),
        (17, 6, 7, 7, 5, 3, 1, 1, 1),
        // 40 chunks of one sample in 8 groups: the kernel gradient accumulates
        // across chunks within a group.
        (40, 2, 28, 28, 3, 3, 1, 1, 1),
        // Winograd F(2x2, 3x3) (3x3, stride 1, channels multiples of 16): odd
        // sizes whose last tiles stick out, paddings 0, 1 and 2, chunks of
        // several samples and a remainder chunk, wide channel counts.
        (3, 16, 7, 7, 32, 3, 1, 1, 1),
        (2, 32, 6, 9, 16, 3, 1, 0, 1),
        (2, 16, 5, 8, 16, 3, 1, 2, 1),
        (9, 16, 28, 28, 16, 3, 1, 1, 1),
        (5, 64, 4, 4, 48, 3, 1, 1, 1),
        (1, 16, 1, 1, 16, 3, 1, 1, 1),
    ];
    for (i, &(b, ci, h, w, co, k, s, p, d)) in cases.iter().enumerate() {
        let label = format!("case {i}: b{b} {ci}->{co} {h}x{w} k{k} s{s} p{p} d{d}");
        let x = var(&[b, ci, h, w], 3 * i as u64);
        let kern = var(&[co, ci, k, k], 3 * i as u64 + 1);
        let bias = var(&[co], 3 * i as u64 + 2);
        let params = Conv2dParams {
            stride: s,
            padding: p,
            dilation: d,
        };
        let winograd = k == 3 && s == 1 && d == 1 && ci % 16 == 0 && co % 16 == 0;
        assert_eq!(
            uses_winograd(&[b, ci, h, w], &[co, ci, k, k], params),
            winograd,
            "{label}: Winograd path"
        );
        check_against(
            &label,
            &[&x, &kern, &bias],
            || {
                conv2d(
                    x.as_tensor(),
                    kern.as_tensor(),
                    Some(bias.as_tensor()),
                    params,
                )
                .expect("ours")
            },
            || f32_of(strided_conv_reference(&x, &kern, &bias, params)),
        );
    }
    // A huge image falls back to im2col (Winograd's tiles would take 2 GiB per sample).
    assert!(uses_winograd(
        &[1, 64, 128, 128],
        &[64, 64, 3, 3],
        Conv2dParams::same(1)
    ));
    assert!(!uses_winograd(
        &[1, 512, 1024, 1024],
        &[512, 512, 3, 3],
        Conv2dParams::same(1)
    ));
    // Without a bias, and a kernel that does not fit.
    let x = var(&[2, 3, 4, 4], 1);
    let kern = var(&[2, 3, 3, 3], 2);
    let y = conv2d(x.as_tensor(), kern.as_tensor(), None, Conv2dParams::same(1)).expect("conv");
    let r = x
        .as_tensor()
        .conv2d(kern.as_tensor(), 1, 1, 1, 1)
        .expect("candle");
    assert!(rel_err(&y, &r) < 1e-4);
    let big = var(&[2, 3, 7, 7], 3);
    assert!(
        conv2d(
            x.as_tensor(),
            big.as_tensor(),
            None,
            Conv2dParams::default()
        )
        .is_err()
    );
    let wrong = var(&[2, 4, 3, 3], 4);
    assert!(
        conv2d(
            x.as_tensor(),
            wrong.as_tensor(),
            None,
            Conv2dParams::same(1)
        )
        .is_err()
    );
}

/// candle's stride-1 convolution in f64, then every `stride`-th output (candle's
/// own strided backward returns the wrong input-gradient shape when the stride
/// does not divide the padded size, e.g. 9 rows, kernel 3, stride 2).
fn strided_conv_reference(x: &Var, kern: &Var, bias: &Var, p: Conv2dParams) -> Tensor {
    let co = kern.dim(0).expect("c_out");
    let y = f64_of(x)
        .conv2d(&f64_of(kern), p.padding, 1, p.dilation, 1)
        .and_then(|y| y.broadcast_add(&f64_of(bias).reshape((1, co, 1, 1))?))
        .expect("candle conv");
    if p.stride == 1 {
        return y;
    }
    let pick = |dim: usize| -> Tensor {
        let n = y.dim(dim).expect("dim");
        let idx: Vec<u32> = (0..n as u32).step_by(p.stride).collect();
        let len = idx.len();
        Tensor::from_vec(idx, len, &Device::Cpu).expect("index")
    };
    y.index_select(&pick(2), 2)
        .and_then(|y| y.index_select(&pick(3), 3))
        .expect("subsample")
}

/// candle's own group norm, then the modulation and SiLU, from candle's ops.
fn group_norm_reference(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    ss: Option<&Tensor>,
    silu: bool,
    groups: usize,
) -> Tensor {
    use candle_nn::Module as _;
    let c = x.dim(1).expect("c");
    let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, 1e-5).expect("gn");
    let mut y = gn.forward(x).expect("forward");
    let mut dims = vec![x.dim(0).expect("b"), c];
    dims.resize(x.rank(), 1);
    if let Some(ss) = ss {
        let scale = ss
            .narrow(1, 0, c)
            .and_then(|s| s.reshape(dims.clone()))
            .expect("s");
        let shift = ss
            .narrow(1, c, c)
            .and_then(|s| s.reshape(dims.clone()))
            .expect("h");
        y = y
            .broadcast_mul(&(scale + 1.0).expect("1+s"))
            .and_then(|y| y.broadcast_add(&shift))
            .expect("modulate");
    }
    if silu { y.silu().expect("silu") } else { y }
}

#[test]
fn group_norm_matches_candle_in_value_and_gradient() {
    // (batch, channels, h, w, groups)
    let cases = [
        (1, 4, 3, 3, 2),
        (2, 8, 5, 7, 4),
        (3, 6, 1, 1, 2),
        (9, 32, 7, 7, 8),
        (2, 16, 28, 28, 8),
        (5, 3, 4, 5, 1),
    ];
    for (i, &(b, c, h, w, g)) in cases.iter().enumerate() {
        for (modulated, silu) in [(false, false), (true, false), (false, true), (true, true)] {
            let label = format!("case {i}: b{b} c{c} {h}x{w} g{g} mod {modulated} silu {silu}");
            let seed = 10 * i as u64;
            // An offset mean checks the variance is not taken as E[x²] − E[x]².
            let x = Var::from_tensor(
                &(var(&[b, c, h, w], seed).as_tensor().affine(3.0, 5.0)).expect("x"),
            )
            .expect("x");
            let gamma =
                Var::from_tensor(&(var(&[c], seed + 1).as_tensor() + 1.0).expect("g")).expect("g");
            let beta = var(&[c], seed + 2);
            let ss = var(&[b, 2 * c], seed + 3);
            let ss_t = modulated.then(|| ss.as_tensor());
            let mut vars = vec![&x, &gamma, &beta];
            if modulated {
                vars.push(&ss);
            }
            check_against(
                &label,
                &vars,
                || {
                    group_norm(
                        x.as_tensor(),
                        gamma.as_tensor(),
                        beta.as_tensor(),
                        ss_t,
                        silu,
                        GroupNormParams::new(g),
                    )
                    .expect("ours")
                },
                || {
                    let ss64 = f64_of(&ss);
                    f32_of(group_norm_reference(
                        &f64_of(&x),
                        &f64_of(&gamma),
                        &f64_of(&beta),
                        modulated.then_some(&ss64),
                        silu,
                        g,
                    ))
                },
            );
        }
    }
    let x = var(&[2, 6, 3, 3], 1);
    let p = var(&[6], 2);
    assert!(
        group_norm(
            x.as_tensor(),
            p.as_tensor(),
            p.as_tensor(),
            None,
            false,
            GroupNormParams::new(4)
        )
        .is_err()
    );
}

#[test]
fn upsample_matches_candle_in_value_and_gradient() {
    for (i, &(b, c, h, w, f)) in [(1, 1, 3, 3, 2), (2, 3, 7, 5, 2), (3, 2, 4, 6, 3)]
        .iter()
        .enumerate()
    {
        let x = var(&[b, c, h, w], i as u64);
        check_against(
            &format!("case {i}"),
            &[&x],
            || upsample_nearest(x.as_tensor(), f).expect("ours"),
            || f32_of(f64_of(&x).upsample_nearest2d(h * f, w * f).expect("candle")),
        );
    }
}

/// Central finite differences of `f` at a few coordinates of `v` against the
/// analytic gradient of `sum(f(v) · w)`.
fn check_finite_differences(label: &str, v: &Var, f: impl Fn(&Tensor) -> Tensor) {
    let y = f(v.as_tensor());
    let w = var(y.dims(), 7);
    let loss = |t: &Tensor| -> f64 {
        let y = f(t);
        vals(&y)
            .iter()
            .zip(vals(w.as_tensor()))
            .map(|(a, b)| a * b)
            .sum()
    };
    let grads = weighted_sum_grads(&y, w.as_tensor());
    let g = vals(grads.get(v.as_tensor()).expect("gradient"));
    let base = vals(v.as_tensor());
    let scale = g.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    let n = base.len();
    for idx in [0, n / 3, n / 2, n - 1] {
        let eps = 1e-2f64;
        let at = |d: f64| {
            let mut p: Vec<f32> = base.iter().map(|&x| x as f32).collect();
            p[idx] += d as f32;
            loss(&Tensor::from_vec(p, v.dims(), &Device::Cpu).expect("p"))
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let err = (fd - g[idx]).abs() / scale;
        assert!(
            err < 2e-3,
            "{label}[{idx}]: finite difference {fd} vs {}",
            g[idx]
        );
    }
}

#[test]
fn conv2d_and_group_norm_gradients_match_finite_differences() {
    let x = var(&[2, 3, 6, 5], 21);
    let kern = var(&[4, 3, 3, 3], 22);
    let p = Conv2dParams::strided(2, 1);
    check_finite_differences("conv2d dx", &x, |x| {
        conv2d(x, kern.as_tensor(), None, p).expect("conv")
    });
    check_finite_differences("conv2d dk", &kern, |k| {
        conv2d(x.as_tensor(), k, None, p).expect("conv")
    });
    let gamma = var(&[4], 23);
    let beta = var(&[4], 24);
    let ss = var(&[2, 8], 25);
    let xg = var(&[2, 4, 3, 3], 26);
    let gn = |x: &Tensor, ss: &Tensor| {
        group_norm(
            x,
            gamma.as_tensor(),
            beta.as_tensor(),
            Some(ss),
            true,
            GroupNormParams::new(2),
        )
        .expect("gn")
    };
    check_finite_differences("group-norm dx", &xg, |x| gn(x, ss.as_tensor()));
    check_finite_differences("group-norm dss", &ss, |s| gn(xg.as_tensor(), s));
}

#[test]
fn fused_adamw_ema_and_sum_of_squares_match_candle_ops_in_f64() {
    use flowlab::model::ops::{AdamWStep, adamw_update, ema_update, sum_squares};
    // 70001 values: several parallel chunks and a ragged end.
    let n = 70_001;
    let p = var(&[n], 1);
    let mut p32 = p.as_tensor().clone();
    let mut p64 = f64_of(&p);
    let mut s32 = Tensor::zeros((2, n), DType::F32, &Device::Cpu).expect("state");
    let mut s64 = Tensor::zeros((2, n), DType::F64, &Device::Cpu).expect("state");
    for t in 1..=5 {
        let g = var(&[n], 10 + t as u64);
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bias_correction: (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t)),
            decay: 1.0 - 1e-2 * 0.1,
            grad_scale: 0.5,
        };
        (p32, s32) = adamw_update(&p32, g.as_tensor(), &s32, step).expect("fused");
        (p64, s64) = adamw_update(&p64, &f64_of(&g), &s64, step).expect("candle");
        assert!(rel_err(&p32, &p64) < 1e-5, "step {t}: parameters");
        assert!(rel_err(&s32, &s64) < 1e-5, "step {t}: moments");
    }
    let e = var(&[n], 3);
    let e32 = ema_update(e.as_tensor(), &p32, 0.99).expect("fused");
    let e64 = ema_update(&f64_of(&e), &p64, 0.99).expect("candle");
    assert!(rel_err(&e32, &e64) < 1e-6, "ema");
    let (a, b) = (
        sum_squares(&p32).expect("fused"),
        sum_squares(&p64).expect("candle"),
    );
    assert!((a - b).abs() / b < 1e-5, "sum of squares {a} vs {b}");
}

#[test]
fn fused_linear_layers_match_candle_in_value_and_gradient() {
    use flowlab::model::ops::{linear, silu_linear};
    for (i, &(rows, n_in, n_out)) in [
        (1usize, 3usize, 2usize),
        (7, 33, 5),
        (300, 64, 17),
        (2049, 9, 40),
    ]
    .iter()
    .enumerate()
    {
        let seed = 5 * i as u64;
        // x depends on a variable through an op, so its gradient is computed.
        let x0 = var(&[rows, n_in], seed);
        let w = var(&[n_out, n_in], seed + 1);
        let b = var(&[n_out], seed + 2);
        let layer = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let reference = |act: bool| {
            let x = (f64_of(&x0) * 2.0).expect("x");
            let x = if act { x.silu().expect("silu") } else { x };
            let y = x
                .matmul(&f64_of(&w).t().expect("t"))
                .and_then(|y| y.broadcast_add(&f64_of(&b)))
                .expect("linear");
            f32_of(y)
        };
        let x = || (x0.as_tensor() * 2.0).expect("x");
        check_against(
            &format!("linear {rows}x{n_in}->{n_out}"),
            &[&x0, &w, &b],
            || linear(&x(), &layer).expect("ours"),
            || reference(false),
        );
        check_against(
            &format!("silu_linear {rows}x{n_in}->{n_out}"),
            &[&x0, &w, &b],
            || silu_linear(&x(), &layer).expect("ours"),
            || reference(true),
        );
    }
}
