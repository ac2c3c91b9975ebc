//! Discrete flow matching against ground truth: the mixture path's marginals,
//! the tokenizer, the sampler's jump probabilities and vocabulary, the losses,
//! training, and checkpoints of token models.

use candle_core::{Device, Tensor};
use flowlab::data::DatasetKind;
use flowlab::discrete::{
    DiscreteConfig, DiscreteLoss, DiscreteSampling, DiscreteSource, Tokenizer, sample_tokens,
};
use flowlab::model::{FlowModel, ModelConfig, VelocityField};
use flowlab::rng::{Stream, stream_rng};
use flowlab::train::{TrainConfig, Trainer};

/// A "network" whose posterior p(x_1 | x_t) is a fixed distribution `pi` at
/// every coordinate, whatever x_t is.
struct Fixed {
    pi: Vec<f32>,
}

impl VelocityField for Fixed {
    fn velocity(&self, x: &Tensor, _t: &Tensor) -> flowlab::Result<Tensor> {
        Ok(x.clone())
    }
}

impl FlowModel for Fixed {
    fn config(&self) -> ModelConfig {
        ModelConfig::default()
    }
    fn token_levels(&self) -> usize {
        self.pi.len()
    }
    fn token_logits(
        &self,
        tokens: &Tensor,
        _t: &Tensor,
        _labels: Option<&Tensor>,
    ) -> flowlab::Result<Tensor> {
        let (n, d) = tokens.dims2()?;
        let logp: Vec<f32> = self.pi.iter().map(|p| p.ln()).collect();
        let row = Tensor::from_vec(logp, (1, 1, self.pi.len()), tokens.device())?;
        Ok(row.broadcast_as((n, d, self.pi.len()))?.contiguous()?)
    }
}

#[test]
fn the_mixture_path_is_the_source_at_0_the_data_at_1_and_kappa_in_between() {
    for source in DiscreteSource::ALL {
        let dc = DiscreteConfig {
            source,
            levels: 8,
            kappa_power: 2.0,
            ..Default::default()
        };
        let mut rng = stream_rng(1, Stream::Eval, 0);
        let (n, d) = (2000, 5);
        let x1: Vec<u32> = (0..n * d).map(|i| (i % 7) as u32).collect();
        let at = |t: f64, rng: &mut _| dc.path_sample(&x1, d, &vec![t; n], rng);
        assert_eq!(at(1.0, &mut rng), x1, "t = 1 is the data");
        let x0 = at(0.0, &mut rng);
        match source {
            DiscreteSource::Mask => assert!(x0.iter().all(|&k| k == 8)),
            DiscreteSource::Uniform => {
                // Uniform over the 8 levels: each about 1/8.
                for level in 0..8 {
                    let share = x0.iter().filter(|&&k| k == level).count() as f64 / x0.len() as f64;
                    assert!(
                        (share - 0.125).abs() < 0.012,
                        "{source:?} level {level}: {share}"
                    );
                }
            }
        }
        // At t = 0.6 a coordinate holds its data token with chance kappa = 0.36
        // (plus, for the uniform source, the 1/8 chance of having started there).
        let xt = at(0.6, &mut rng);
        let same = xt.iter().zip(&x1).filter(|(a, b)| a == b).count() as f64 / xt.len() as f64;
        let want = match source {
            DiscreteSource::Mask => 0.36,
            DiscreteSource::Uniform => 0.36 + 0.64 / 8.0,
        };
        assert!((same - want).abs() < 0.015, "{source:?}: {same} vs {want}");
    }
}

#[test]
fn tokenizer_round_trips_and_keeps_the_grey_ends_exact() {
    for tok in [Tokenizer::bins_2d(128), Tokenizer::grey_levels(4)] {
        for k in 0..tok.levels as u32 {
            assert_eq!(tok.token(tok.value(k)), k, "{tok:?} token {k}");
        }
        assert!(
            tok.value(tok.levels as u32).is_nan(),
            "the mask has no value"
        );
        assert_eq!(tok.token(-1e9), 0);
        assert_eq!(tok.token(1e9), tok.levels as u32 - 1);
    }
    let g = Tokenizer::grey_levels(4);
    assert_eq!(
        (g.value(0), g.value(3)),
        (-1.0, 1.0),
        "black and white stay exact"
    );
    assert_eq!(g.token(-0.2), 1);
    // A 2D bin stands for its centre: within half a bin of every value in it.
    let b = Tokenizer::bins_2d(128);
    let half = 3.0 / 128.0;
    for v in [-2.9f32, -0.01, 0.0, 1.234, 2.99] {
        assert!((b.value(b.token(v)) - v).abs() <= half + 1e-6, "{v}");
    }
}

#[test]
fn the_sampler_unmasks_at_the_path_rate_and_ends_on_the_model_distribution() {
    let pi = vec![0.1f32, 0.2, 0.3, 0.4];
    let model = Fixed { pi: pi.clone() };
    let dc = DiscreteConfig {
        source: DiscreteSource::Mask,
        levels: 4,
        kappa_power: 2.0,
        ..Default::default()
    };
    let (n, d) = (4000, 3);
    for (corrector, steps) in [(0.0, 10), (2.0, 100)] {
        let sampling = DiscreteSampling {
            steps,
            corrector,
            guidance: 1.0,
        };
        let s = sample_tokens(
            &model,
            &dc,
            d,
            n,
            7,
            &sampling,
            None,
            true,
            None,
            &Device::Cpu,
        )
        .expect("sample");
        assert_eq!(s.states.len(), steps + 1);
        assert_eq!(s.nfe, steps);
        // Every state stays in the vocabulary (levels + the mask); the end has no mask.
        assert!(s.states.iter().flatten().all(|&k| k <= 4));
        assert!(s.tokens.iter().all(|&k| k < 4), "no masks at t = 1");
        for level in 0..4u32 {
            let share =
                s.tokens.iter().filter(|&&k| k == level).count() as f64 / s.tokens.len() as f64;
            assert!(
                (share - f64::from(pi[level as usize])).abs() < 0.015,
                "corrector {corrector}, level {level}: {share}"
            );
        }
        // Without the corrector, the share still masked at t is 1 - kappa_t.
        if corrector == 0.0 {
            for (t, st) in s.times.iter().zip(&s.states) {
                let masked = st.iter().filter(|&&k| k == 4).count() as f64 / st.len() as f64;
                assert!(
                    (masked - (1.0 - t * t)).abs() < 0.015,
                    "t {t}: {masked} masked, want {}",
                    1.0 - t * t
                );
            }
        } else {
            // The corrector's extra forward and backward jumps cancel in the
            // marginals: still about 1 - kappa masked half-way (100 steps).
            let mid = &s.states[50];
            let masked = mid.iter().filter(|&&k| k == 4).count() as f64 / mid.len() as f64;
            assert!(
                (masked - 0.75).abs() < 0.03,
                "corrector at t = 0.5: {masked} masked"
            );
        }
    }
}

#[test]
fn losses_are_zero_for_a_perfect_posterior_and_positive_otherwise() {
    let dev = Device::Cpu;
    let x1 = Tensor::from_vec(vec![0u32, 2, 1, 3], (2, 2), &dev).expect("x1");
    let xt = Tensor::from_vec(vec![4u32, 2, 4, 0], (2, 2), &dev).expect("xt");
    let t = [0.3, 0.8];
    let perfect: Vec<f32> = [0usize, 2, 1, 3]
        .iter()
        .flat_map(|&k| (0..4).map(move |j| if j == k { 30.0 } else { -30.0 }))
        .collect();
    let perfect = Tensor::from_vec(perfect, (2, 2, 4), &dev).expect("logits");
    let flat = Tensor::zeros((2, 2, 4), candle_core::DType::F32, &dev).expect("zeros");
    for loss in DiscreteLoss::ALL {
        let dc = DiscreteConfig {
            levels: 4,
            loss,
            ..Default::default()
        };
        let l0 = dc
            .loss(&perfect, &xt, &x1, &t)
            .and_then(|l| Ok(l.to_scalar::<f32>()?))
            .expect("loss");
        let l1 = dc
            .loss(&flat, &xt, &x1, &t)
            .and_then(|l| Ok(l.to_scalar::<f32>()?))
            .expect("loss");
        assert!(l0.abs() < 1e-4, "{loss:?} perfect: {l0}");
        assert!(l1 > 0.1, "{loss:?} uninformed: {l1}");
        if loss == DiscreteLoss::CrossEntropy {
            assert!(
                (l1 - 4f32.ln()).abs() < 1e-5,
                "uniform logits: ln 4, got {l1}"
            );
        }
    }
}

#[test]
fn discrete_moons_train_to_near_the_noise_floor_with_either_loss() {
    use flowlab::metrics::w2_exact;
    // The generalised KL weights late times by 1 / (1 - t) and needs more steps.
    for (loss, steps) in [
        (DiscreteLoss::CrossEntropy, 1200),
        (DiscreteLoss::GeneralizedKl, 3000),
    ] {
        let base = TrainConfig {
            steps,
            batch_size: 256,
            seed: 4,
            held_out_size: 512,
            held_out_every: 0,
            ..TrainConfig::default()
        };
        let cfg = base.with_discrete(Some(DiscreteConfig {
            loss,
            ..Default::default()
        }));
        let mut tr = Trainer::new(cfg.clone(), &Device::Cpu).expect("trainer");
        let before = tr.held_out_loss().expect("loss").expect("held-out");
        tr.run(|_| std::ops::ControlFlow::Continue(()))
            .expect("train");
        let after = tr.held_out_loss().expect("loss").expect("held-out");
        assert!(
            after < 0.6 * before,
            "{loss:?}: held-out {before} -> {after}"
        );
        let dc = cfg.discrete.expect("discrete");
        let s = flowlab::discrete::sample_values(
            tr.sampling_model(),
            &dc,
            &[2],
            1000,
            9,
            &DiscreteSampling::default(),
            None,
            false,
            &Device::Cpu,
        )
        .expect("sample");
        let ds = cfg.dataset.build().expect("data");
        let reference = ds.sample_held_out(1000, &mut stream_rng(9, Stream::Eval, 0));
        let reference2 = ds.sample_held_out(1000, &mut stream_rng(9, Stream::Eval, 1));
        let w2 = w2_exact(&s.data, &reference, 2).expect("w2");
        let floor = w2_exact(&reference, &reference2, 2).expect("w2");
        assert!(w2 < 2.0 * floor, "{loss:?}: W2 {w2} vs floor {floor}");
    }
}

#[test]
fn discrete_configs_wrap_the_network_and_checkpoints_round_trip() {
    let cfg = TrainConfig {
        steps: 20,
        batch_size: 64,
        held_out_size: 64,
        ..TrainConfig::default()
    }
    .with_discrete(Some(DiscreteConfig {
        levels: 32,
        source: DiscreteSource::Uniform,
        ..Default::default()
    }));
    match &cfg.model {
        ModelConfig::Tokens(t) => {
            assert_eq!(t.levels, 32);
            assert_eq!(t.inner.as_ref(), &TrainConfig::default().model);
        }
        other => panic!("expected a token network, got {other:?}"),
    }
    assert_eq!(cfg.with_discrete(None).model, TrainConfig::default().model);
    // JSON round trip.
    assert_eq!(TrainConfig::from_json(&cfg.to_json()).expect("json"), cfg);
    // Moving to MNIST keeps the flow discrete with grey levels and a token UNet.
    let img = cfg.with_dataset(DatasetKind::Mnist { dir: None });
    assert_eq!(
        img.discrete.map(|d| d.levels),
        Some(flowlab::discrete::IMAGE_LEVELS)
    );
    assert!(matches!(
        img.model.network(),
        ModelConfig::Unet(u) if u.classes == 10
    ));
    // Mismatches are refused with a message.
    let mut bad = cfg.clone();
    if let Some(d) = bad.discrete.as_mut() {
        d.levels = 16;
    }
    assert!(
        bad.validate()
            .expect_err("levels")
            .to_string()
            .contains("levels")
    );
    let manifold = cfg.with_dataset(DatasetKind::from_name("sphere-vmf", None).expect("set"));
    assert!(manifold.discrete.is_none(), "manifolds are continuous");
    // Train a little, save, load: the same logits.
    let mut tr = Trainer::new(cfg, &Device::Cpu).expect("trainer");
    tr.run(|_| std::ops::ControlFlow::Continue(()))
        .expect("train");
    let dir = crate::common::temp_dir("discrete-ck");
    let path = dir.join("d.safetensors");
    flowlab::checkpoint::Checkpoint::from_trainer(&tr)
        .and_then(|c| c.save(&path))
        .expect("save");
    let loaded = flowlab::checkpoint::LoadedModel::load(&path, &Device::Cpu).expect("load");
    let x = Tensor::from_vec(vec![0u32, 31, 5, 32], (2, 2), &Device::Cpu).expect("x");
    let t = Tensor::from_vec(vec![0.2f32, 0.9], 2, &Device::Cpu).expect("t");
    let a = tr
        .sampling_model()
        .token_logits(&x, &t, None)
        .expect("logits");
    let b = loaded.model.token_logits(&x, &t, None).expect("logits");
    assert_eq!(a.dims(), [2, 2, 32]);
    assert!(crate::common::max_diff(&a, &b) < 1e-6);
}

#[test]
fn a_token_unet_learns_mnist_grey_levels_on_a_short_run() {
    use flowlab::model::UnetConfig;
    let cfg = TrainConfig {
        dataset: DatasetKind::Mnist { dir: None },
        model: ModelConfig::Unet(UnetConfig {
            channels: vec![8, 16],
            groups: 4,
            embed_dim: 16,
            attention: false,
            classes: 10,
            ..UnetConfig::default()
        }),
        steps: 60,
        batch_size: 16,
        held_out_size: 64,
        held_out_every: 0,
        seed: 3,
        ..TrainConfig::default()
    }
    .with_discrete(Some(DiscreteConfig::for_images()));
    let mut tr = Trainer::new(cfg.clone(), &Device::Cpu).expect("trainer");
    let before = tr.held_out_loss().expect("loss").expect("held-out");
    tr.run(|_| std::ops::ControlFlow::Continue(()))
        .expect("train");
    let after = tr.held_out_loss().expect("loss").expect("held-out");
    assert!(after < 0.7 * before, "held-out loss {before} -> {after}");
    // Guided samples of digit 7: grey levels only, no masks left.
    let s = flowlab::discrete::sample_values(
        tr.sampling_model(),
        &cfg.discrete.expect("discrete"),
        &[1, 28, 28],
        2,
        1,
        &DiscreteSampling {
            steps: 5,
            corrector: 0.5,
            guidance: 2.0,
        },
        Some(&[7, 7]),
        true,
        &Device::Cpu,
    )
    .expect("sample");
    assert_eq!(s.nfe, 10, "guidance evaluates twice per step");
    let levels = [-1.0f32, -1.0 / 3.0, 1.0 / 3.0, 1.0];
    assert!(
        s.data
            .iter()
            .all(|v| levels.iter().any(|l| (l - v).abs() < 1e-6))
    );
    assert!(
        s.states.first().expect("t = 0").iter().all(|v| v.is_nan()),
        "all masked at t = 0"
    );
}
