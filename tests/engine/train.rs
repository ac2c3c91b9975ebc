//! The training loop, AdamW and seeded reproducibility.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor, Var};
use flowlab::data::{Dataset, Standardizer, Toy2d, ToyDataset};
use flowlab::train::{AdamW, OptimizerConfig, RunEnd, TrainConfig, Trainer};
use rand::rngs::StdRng;

use crate::common::{max_diff, tiny_config, weighted_sum_grads};

fn losses(cfg: &TrainConfig, steps: u64) -> Vec<f32> {
    let mut tr = Trainer::new(cfg.clone(), &Device::Cpu).expect("trainer");
    (0..steps).map(|_| tr.step().expect("step").loss).collect()
}

#[test]
fn loss_falls_on_a_short_run() {
    let cfg = tiny_config(300);
    let mut tr = Trainer::new(cfg, &Device::Cpu).expect("trainer");
    let first = tr.held_out_loss().expect("loss").expect("held-out on");
    let mut last = None;
    let end = tr
        .run(|r| {
            if r.held_out_loss.is_some() {
                last = r.held_out_loss;
            }
            ControlFlow::Continue(())
        })
        .expect("run");
    assert_eq!(end, RunEnd::Finished);
    assert_eq!(tr.step_count(), 300);
    let last = last.expect("held-out loss reported");
    // The CondOT loss has an irreducible part (~1.3 on standardised moons): the
    // untrained model starts near 2-3.
    assert!(last < 0.8 * first, "held-out loss {first} -> {last}");
}

#[test]
fn same_seed_same_loss_curve_other_seed_other_curve() {
    let cfg = tiny_config(20);
    let a = losses(&cfg, 20);
    let b = losses(&cfg, 20);
    assert_eq!(a, b, "bit-identical loss curves for one seed");
    let mut other = cfg.clone();
    other.seed = 99;
    assert_ne!(a, losses(&other, 20));
}

#[test]
fn run_stops_between_steps_when_asked() {
    let mut tr = Trainer::new(tiny_config(100), &Device::Cpu).expect("trainer");
    let end = tr
        .run(|r| {
            if r.step == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("run");
    assert_eq!(end, RunEnd::Stopped);
    assert_eq!(tr.step_count(), 3);
}

#[test]
fn lr_schedule_warms_up_then_decays_to_the_floor() {
    let o = OptimizerConfig {
        lr: 1e-3,
        warmup_steps: 10,
        min_lr_ratio: 0.1,
        ..Default::default()
    };
    assert!((o.lr_at(0, 100) - 1e-4).abs() < 1e-12);
    assert!((o.lr_at(9, 100) - 1e-3).abs() < 1e-12);
    assert!((o.lr_at(10, 100) - 1e-3).abs() < 1e-12);
    assert!(
        (o.lr_at(55, 100) - 0.55e-3).abs() < 1e-9,
        "half-way cosine {}",
        o.lr_at(55, 100)
    );
    assert!((o.lr_at(100, 100) - 1e-4).abs() < 1e-12);
    let mut prev = f64::INFINITY;
    for s in 10..100 {
        assert!(o.lr_at(s, 100) <= prev);
        prev = o.lr_at(s, 100);
    }
}

#[test]
fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient() {
    // Adam's first update is lr · g / (|g| + eps) = lr · sign(g).
    let p = Var::from_vec(vec![1.0f32, -2.0, 0.5], 3, &Device::Cpu).expect("var");
    let cfg = OptimizerConfig {
        lr: 0.1,
        weight_decay: 0.0,
        grad_clip: None,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![p.clone()], cfg).expect("opt");
    let loss = p.as_tensor().sqr().expect("sqr").sum_all().expect("sum");
    opt.step(&loss.backward().expect("grad"), 0.1, 1)
        .expect("step");
    let got: Vec<f32> = p.as_tensor().to_vec1().expect("vals");
    let want = [0.9f32, -1.9, 0.4];
    assert!(
        got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
        "{got:?}"
    );
    // Decoupled weight decay shrinks the weight by lr · wd on top.
    let q = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).expect("var");
    let cfg = OptimizerConfig {
        lr: 0.1,
        weight_decay: 0.5,
        grad_clip: None,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![q.clone()], cfg).expect("opt");
    let loss = q.as_tensor().sqr().expect("sqr").sum_all().expect("sum");
    opt.step(&loss.backward().expect("grad"), 0.1, 1)
        .expect("step");
    let got: Vec<f32> = q.as_tensor().to_vec1().expect("vals");
    assert!((got[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6, "{got:?}");
}

#[test]
fn gradient_clipping_bounds_the_update_direction_norm() {
    let p = Var::from_vec(vec![3.0f32, 4.0], 2, &Device::Cpu).expect("var");
    let cfg = OptimizerConfig {
        grad_clip: Some(1.0),
        ..Default::default()
    };
    let opt = AdamW::new(vec![p.clone()], cfg).expect("opt");
    let loss = (p.as_tensor() * 10.0).expect("mul").sum_all().expect("sum");
    let norm = opt
        .grad_norm(&loss.backward().expect("grad"))
        .expect("norm");
    assert!(
        (norm - 200f32.sqrt()).abs() < 1e-4,
        "gradient (10, 10) has norm {norm}"
    );
}

/// Moons that turn into NaN once `poison` is set.
struct Poisonable {
    inner: ToyDataset,
    poison: Arc<AtomicBool>,
}

impl Dataset for Poisonable {
    fn sample_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn sample_train(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let mut v = self.inner.sample_train(n, rng);
        if self.poison.load(Ordering::Relaxed) {
            v[0] = f32::NAN;
        }
        v
    }
    fn sample_held_out(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        self.inner.sample_held_out(n, rng)
    }
    fn to_data_space(&self, x: &mut [f32]) {
        self.inner.to_data_space(x)
    }
    fn standardizer(&self) -> Option<Standardizer> {
        self.inner.standardizer()
    }
}

#[test]
fn nan_loss_stops_training_and_keeps_the_last_good_weights() {
    let poison = Arc::new(AtomicBool::new(false));
    let ds = Arc::new(Poisonable {
        inner: ToyDataset::new(Toy2d::Moons { noise: 0.05 }),
        poison: poison.clone(),
    });
    let mut tr = Trainer::with_dataset(tiny_config(50), ds, &Device::Cpu).expect("trainer");
    for _ in 0..5 {
        tr.step().expect("good step");
    }
    let before: Vec<Tensor> = tr
        .params()
        .tensors()
        .iter()
        .map(|t| t.copy().expect("copy"))
        .collect();
    poison.store(true, Ordering::Relaxed);
    let err = tr.step().expect_err("NaN must stop training");
    match &err {
        flowlab::Error::NonFinite {
            step,
            last_good_step,
            what,
            ..
        } => {
            assert_eq!((*step, *last_good_step, *what), (6, 5, "loss"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("step 5 were kept"), "{err}");
    assert_eq!(tr.step_count(), 5);
    for (a, b) in before.iter().zip(tr.params().tensors()) {
        assert_eq!(max_diff(a, &b), 0.0, "weights unchanged");
    }
    // Training continues once the data is fine again.
    poison.store(false, Ordering::Relaxed);
    assert_eq!(tr.step().expect("recovers").step, 6);
}

#[test]
fn invalid_configs_are_rejected_with_a_message() {
    let mut c = tiny_config(10);
    c.batch_size = 0;
    assert!(
        Trainer::new(c, &Device::Cpu)
            .expect_err("batch 0")
            .to_string()
            .contains("batch size")
    );
    let mut c = tiny_config(10);
    c.optimizer.lr = -1.0;
    assert!(
        Trainer::new(c, &Device::Cpu)
            .expect_err("lr")
            .to_string()
            .contains("learning rate")
    );
    let err =
        TrainConfig::from_json("{\"batch_size\": 12, \"typo\": 1}").expect_err("unknown field");
    assert!(err.to_string().contains("typo"), "{err}");
    let cfg = TrainConfig::from_json("{\"batch_size\": 12}").expect("partial config");
    assert_eq!(cfg.batch_size, 12);
    assert_eq!(
        TrainConfig::from_json(&cfg.to_json()).expect("round trip"),
        cfg
    );
}

#[test]
fn every_scheduler_and_time_sampling_trains() {
    use flowlab::flow::{Scheduler, TimeSampling};
    for (s, ts) in Scheduler::ALL.into_iter().zip([
        TimeSampling::Uniform,
        TimeSampling::LOGIT_NORMAL,
        TimeSampling::Uniform,
        TimeSampling::LOGIT_NORMAL,
        TimeSampling::Uniform,
    ]) {
        let mut cfg = tiny_config(30);
        cfg.scheduler = s;
        cfg.time_sampling = ts;
        let l = losses(&cfg, 30);
        assert!(l.iter().all(|v| v.is_finite()), "{s:?}");
    }
}

#[test]
fn fused_silu_matches_candle_in_value_and_gradient() {
    use flowlab::model::ops::{fast_exp, silu};
    for x in [
        -100.0f32, -87.5, -20.0, -3.3, -0.5, 0.0, 1e-3, 0.7, 5.0, 30.0, 88.0, 100.0,
    ] {
        let (a, b) = (fast_exp(x), x.clamp(-87.0, 88.0).exp());
        assert!(((a - b) / b).abs() < 3e-7, "exp({x}): {a} vs {b}");
    }
    // Odd sizes, more than one parallel chunk, and a non-contiguous view.
    for n in [1usize, 7, 1000, 70_001] {
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2000) as f32 / 100.0 - 10.0)
            .collect();
        let x = Var::from_vec(vals, n, &Device::Cpu).expect("x");
        let ours = silu(x.as_tensor()).expect("silu");
        let reference = x.as_tensor().silu().expect("silu");
        assert!(max_diff(&ours, &reference) < 1e-5, "n={n}: value");
        // Gradient of sum(silu(x) * w) for a fixed w.
        let w = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .expect("w")
            .affine(1e-3, 0.5)
            .expect("w");
        let (g1, g2) = (
            weighted_sum_grads(&ours, &w),
            weighted_sum_grads(&reference, &w),
        );
        let (g1, g2) = (
            g1.get(x.as_tensor()).expect("g1"),
            g2.get(x.as_tensor()).expect("g2"),
        );
        let scale = crate::common::vals(g2)
            .iter()
            .fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(max_diff(g1, g2) / scale < 1e-5, "n={n}: gradient");
    }
    let m = Tensor::arange(0f32, 12.0, &Device::Cpu)
        .expect("m")
        .reshape((3, 4))
        .expect("m")
        .t()
        .expect("t");
    assert!(
        max_diff(&silu(&m).expect("silu"), &m.silu().expect("silu")) < 1e-5,
        "transposed view"
    );
}

#[test]
fn fused_bias_add_and_linear_match_candle_in_value_and_gradient() {
    use candle_nn::Module as _;
    use flowlab::model::ops::{add_bias, linear};
    for (rows, n) in [(1usize, 1usize), (1, 7), (513, 3), (300, 257), (5000, 33)] {
        let xv: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let bv: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 0.3).collect();
        let x = Var::from_vec(xv, (rows, n), &Device::Cpu).expect("x");
        let b = Var::from_vec(bv, n, &Device::Cpu).expect("b");
        let ours = add_bias(x.as_tensor(), b.as_tensor()).expect("fused");
        let reference = x.as_tensor().broadcast_add(b.as_tensor()).expect("candle");
        assert_eq!(max_diff(&ours, &reference), 0.0, "{rows}x{n}: value");
        let w = Tensor::arange(0f32, (rows * n) as f32, &Device::Cpu)
            .expect("w")
            .reshape((rows, n))
            .expect("w")
            .affine(1e-3, -0.2)
            .expect("w");
        let (g1, g2) = (
            weighted_sum_grads(&ours, &w),
            weighted_sum_grads(&reference, &w),
        );
        for v in [&x, &b] {
            let (a, c) = (
                g1.get(v.as_tensor()).expect("g"),
                g2.get(v.as_tensor()).expect("g"),
            );
            let scale = crate::common::vals(c)
                .iter()
                .fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(max_diff(a, c) / scale < 1e-5, "{rows}x{n}: gradient");
        }
    }
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    let layer = candle_nn::linear(5, 3, vb).expect("linear");
    let x = Tensor::arange(0f32, 20.0, &Device::Cpu)
        .expect("x")
        .reshape((4, 5))
        .expect("x");
    assert!(
        max_diff(
            &linear(&x, &layer).expect("ours"),
            &layer.forward(&x).expect("candle")
        ) < 1e-5
    );
}

#[test]
fn mlp_parameter_count_formula_matches_the_built_model() {
    use flowlab::model::{MlpConfig, ModelConfig};
    for (width, depth, shape, fourier) in [
        (32usize, 1usize, vec![2usize], 0usize),
        (64, 3, vec![2], 0),
        (16, 2, vec![1, 28, 28], 0),
        (32, 2, vec![4], 64),
    ] {
        let cfg = MlpConfig {
            width,
            depth,
            fourier_features: fourier,
            ..Default::default()
        };
        let dim: usize = shape.iter().product();
        let built = ModelConfig::Mlp(cfg).param_count(&shape).expect("count");
        assert_eq!(cfg.param_count(dim), built, "{width}x{depth} on {shape:?}");
    }
}

#[test]
fn switching_dataset_kind_switches_the_model_and_back() {
    use flowlab::data::{DatasetKind, Toy2d};
    use flowlab::model::ModelConfig;
    let moons = flowlab::train::TrainConfig {
        seed: 42,
        ..Default::default()
    };
    let mnist = moons.with_dataset(DatasetKind::Mnist { dir: None });
    match &mnist.model {
        ModelConfig::Unet(u) => assert_eq!(u.classes, 10),
        other => panic!("expected a UNet, got {other:?}"),
    }
    assert_eq!((mnist.batch_size, mnist.steps, mnist.seed), (128, 2000, 42));
    mnist.validate().expect("valid");
    let circles = mnist.with_dataset(DatasetKind::Toy2d {
        toy: Toy2d::Circles {
            noise: 0.05,
            factor: 0.5,
        },
    });
    assert_eq!(circles.model, moons.model);
    assert_eq!(
        (circles.batch_size, circles.steps, circles.seed),
        (512, 4000, 42)
    );
    // Between two 2D sets only the data changes.
    let mut tuned = moons.clone();
    tuned.batch_size = 64;
    assert_eq!(
        tuned
            .with_dataset(DatasetKind::Toy2d {
                toy: Toy2d::Circles {
                    noise: 0.05,
                    factor: 0.5
                }
            })
            .batch_size,
        64
    );
}

#[test]
fn fourier_features_are_fixed_by_the_config_and_old_configs_load_without_them() {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use flowlab::model::{MlpConfig, ModelConfig};
    let cfg = MlpConfig {
        width: 16,
        depth: 2,
        fourier_features: 8,
        ..Default::default()
    };
    // Two builds with the same weights give the same velocities: the
    // frequencies come from the architecture, not from a run's randomness.
    let build = || {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let m = ModelConfig::Mlp(cfg).build(&[3], vb).expect("build");
        let p = flowlab::train::Params::from_varmap(&map).expect("params");
        flowlab::train::init_params(&p, 5).expect("init");
        m
    };
    let (a, b) = (build(), build());
    let x =
        Tensor::from_vec(vec![0.0f32, 0.6, 0.8, 1.0, 0.0, 0.0], (2, 3), &Device::Cpu).expect("x");
    let t = Tensor::from_vec(vec![0.2f32, 0.7], 2, &Device::Cpu).expect("t");
    let (va, vb) = (
        a.velocity(&x, &t)
            .and_then(|v| Ok(v.flatten_all()?.to_vec1::<f32>()?)),
        b.velocity(&x, &t)
            .and_then(|v| Ok(v.flatten_all()?.to_vec1::<f32>()?)),
    );
    assert_eq!(va.expect("a"), vb.expect("b"));
    // A config written before the field existed loads with the features off.
    let old: MlpConfig = serde_json::from_str(
        r#"{"width": 8, "depth": 1, "activation": "silu",
            "time_embedding": {"frequencies": 8, "max_frequency": 50.0}}"#,
    )
    .expect("old config");
    assert_eq!(old.fourier_features, 0);
    let bad = MlpConfig {
        fourier_scale: -1.0,
        ..cfg
    };
    assert!(bad.validate().is_err());
}
