//! The `flowlab` command line: `train`, `sample`, `eval`, `bench`.
//!
//! Errors are printed to stderr as one message and give a non-zero exit code.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{Checkpoint, CheckpointMeta, LoadedModel};
use crate::data::DatasetKind;
use crate::flow::{Coupling, Scheduler, Source, TimeSampling};
use crate::metrics::{sliced_w2, w2_exact};
use crate::model::{Activation, ModelConfig, VelocityField};
use crate::rng::{Stream, stream_rng};
use crate::sample::sample;
use crate::solver::{SolverConfig, SolverKind};
use crate::train::{TrainConfig, Trainer};
use crate::{Error, Result};

/// FlowLab: train, explore and sample flow-matching generative models.
#[derive(Debug, Parser)]
#[command(name = "flowlab", version, about, long_about = None)]
pub struct Cli {
    /// What to do (no command: open the desktop app).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Open this checkpoint in the desktop app.
    #[arg(long, value_name = "FILE", conflicts_with = "pretrained")]
    pub open: Option<PathBuf>,
    /// Open a model that ships with FlowLab in the desktop app: moons or mnist.
    #[arg(long, value_name = "NAME")]
    pub pretrained: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model and save a checkpoint.
    Train(Box<TrainArgs>),
    /// Draw samples from a checkpoint into a CSV, PNG or IDX file.
    Sample(SampleArgs),
    /// Compare samples with fresh held-out data for every solver and a few step counts.
    Eval(EvalArgs),
    /// Measure training and sampling speed.
    Bench(BenchArgs),
    /// Train the small MNIST classifier that judges generated digits.
    TrainClassifier(ClassifierArgs),
    /// Exact log-likelihood of held-out data under a checkpoint's flow: NLL in
    /// nats (2D, data space) or bits per dimension (images).
    Likelihood(LikelihoodArgs),
    /// Write a weights-only copy of a checkpoint (sampling weights, config and
    /// loss history; no optimiser state): about a quarter of the size.
    ExportWeights(ExportArgs),
}

/// Options of `flowlab likelihood`.
#[derive(Debug, Args)]
pub struct LikelihoodArgs {
    /// The checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Held-out points (or test images) to score.
    #[arg(short = 'n', long = "num", default_value_t = 1000)]
    pub n: usize,
    /// RK4 steps from t = 1 back to t = 0.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Hutchinson probes per sample (0: the exact divergence; images default to 1).
    #[arg(long)]
    pub probes: Option<usize>,
    /// Seed of the held-out draw, dequantisation noise and probes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Points per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// Options of `flowlab export-weights`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The full checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the weights-only checkpoint.
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of `flowlab train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset: moons, circles, 8gaussians, checkerboard, spirals, swissroll,
    /// mnist; on the sphere sphere-vmf, sphere-checkerboard; on the torus
    /// torus-checkerboard, torus-protein.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Noise (or spread) parameter of a 2D dataset.
    #[arg(long)]
    pub noise: Option<f32>,
    /// Folder with MNIST-layout IDX files (default: the MNIST embedded in FlowLab).
    #[arg(long)]
    pub mnist_dir: Option<PathBuf>,
    /// Start from a JSON config file (flags given here override it).
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue training from a checkpoint (its config is used; --steps may extend it).
    #[arg(long, conflicts_with_all = ["dataset", "noise", "mnist_dir", "batch", "lr", "width", "depth", "activation", "scheduler", "time_sampling", "seed", "ema", "weight_decay", "grad_clip", "warmup", "source", "coupling", "coupling_per_class", "dequantize", "flow", "discrete_source", "levels", "kappa_power", "discrete_loss"])]
    pub resume: Option<PathBuf>,
    /// Total training steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed of all randomness.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Network: mlp (2D data) or unet (images).
    #[arg(long)]
    pub model: Option<String>,
    /// Hidden width of the MLP.
    #[arg(long)]
    pub width: Option<usize>,
    /// Number of hidden layers of the MLP.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Activation: silu, relu, gelu, elu, tanh.
    #[arg(long)]
    pub activation: Option<String>,
    /// Classes the UNet is conditioned on (e.g. 10 for MNIST; 0: unconditional).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Probability of training on the null class instead of the label
    /// (classifier-free guidance; default 0.1).
    #[arg(long)]
    pub label_dropout: Option<f64>,
    /// Source distribution at t = 0: gaussian, or a 2D set (moons, 8gaussians, ...) for 2D data.
    #[arg(long)]
    pub source: Option<String>,
    /// Pairing of source and data points per batch: independent, exact-ot, sinkhorn.
    #[arg(long)]
    pub coupling: Option<String>,
    /// Entropy of the Sinkhorn coupling, relative to the batch's mean squared distance.
    #[arg(long, default_value_t = 0.05)]
    pub sinkhorn_reg: f64,
    /// Pair points only within a class (labelled data such as MNIST).
    #[arg(long)]
    pub coupling_per_class: bool,
    /// Images: train on uniformly dequantised pixels (for meaningful bits/dim).
    #[arg(long)]
    pub dequantize: bool,
    /// continuous (an ODE flow) or discrete (tokens: 128 bins per axis for 2D
    /// data, 4 grey levels for images; a continuous-time Markov chain).
    #[arg(long)]
    pub flow: Option<String>,
    /// Discrete flows: where tokens start, mask or uniform.
    #[arg(long)]
    pub discrete_source: Option<String>,
    /// Discrete flows: tokens per coordinate (bins per axis, or grey levels).
    #[arg(long)]
    pub levels: Option<usize>,
    /// Discrete flows: the exponent n of the scheduler kappa_t = t^n.
    #[arg(long)]
    pub kappa_power: Option<f64>,
    /// Discrete flows: the loss, cross-entropy or generalized-kl.
    #[arg(long)]
    pub discrete_loss: Option<String>,
    /// Scheduler: condot, polynomial, vp, linear-vp, cosine.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Training time distribution: uniform, logit-normal.
    #[arg(long)]
    pub time_sampling: Option<String>,
    /// EMA decay of the weights (0 turns EMA off).
    #[arg(long)]
    pub ema: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient-norm clip (0 turns clipping off).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Also save the checkpoint every this many steps.
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Where to write the checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Device: cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Write the effective config as JSON and exit without training.
    #[arg(long)]
    pub print_config: bool,
}

/// Solver options shared by `sample` and `eval`.
#[derive(Debug, Args)]
pub struct SolverArgs {
    /// Solver: euler, midpoint, heun, rk4, dopri5 (default: the checkpoint's).
    #[arg(long)]
    pub solver: Option<String>,
    /// Steps of a fixed-step solver.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Relative tolerance of dopri5.
    #[arg(long)]
    pub rtol: Option<f64>,
    /// Absolute tolerance of dopri5.
    #[arg(long)]
    pub atol: Option<f64>,
    /// Discrete flows: corrector strength (0: the plain discrete Euler sampler).
    #[arg(long, default_value_t = 0.0)]
    pub corrector: f64,
}

/// Options of `flowlab sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The checkpoint to sample from.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The solver.
    #[command(flatten)]
    pub solver: SolverArgs,
    /// Number of samples.
    #[arg(short = 'n', long = "num", default_value_t = 2000)]
    pub n: usize,
    /// Seed of the source noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output: .csv (2D, header x,y), .png (scatter or image grid), .idx (images, u8).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write every solver step of every 2D sample as CSV `t,i,x,y` (trajectories).
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    /// Use the training weights even when EMA weights are stored.
    #[arg(long)]
    pub no_ema: bool,
    /// Class of every sample, for a class-conditional model (without it, such a
    /// model draws every class in turn, one row of the PNG grid per class).
    #[arg(long)]
    pub class: Option<u32>,
    /// Classifier-free guidance scale w: v = v_uncond + w (v_cond − v_uncond);
    /// 0 is unconditional, 1 plainly conditional.
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f64,
    /// Sample as if the model had been trained with this scheduler (condot,
    /// polynomial, vp, linear-vp, cosine): same marginals' family, other paths.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Device: cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Options of `flowlab train-classifier`.
#[derive(Debug, Args)]
pub struct ClassifierArgs {
    /// Training steps.
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Seed of the initial weights and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the classifier.
    #[arg(long, default_value = "weights/mnist-classifier.safetensors")]
    pub out: PathBuf,
    /// Folder with MNIST-layout IDX files (default: the embedded MNIST).
    #[arg(long)]
    pub mnist_dir: Option<PathBuf>,
}

/// Options of `flowlab eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint to evaluate.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Samples (and held-out points) per measurement.
    #[arg(short = 'n', long = "num", default_value_t = 2000)]
    pub n: usize,
    /// Fixed-step counts to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,20")]
    pub steps: Vec<usize>,
    /// Seed of the noise and held-out data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder with MNIST-layout IDX files for the held-out images (default: embedded MNIST).
    #[arg(long)]
    pub mnist_dir: Option<PathBuf>,
    /// Device: cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images: guidance scale for the class-conditional samples the classifier judges.
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f64,
    /// Images: the classifier that judges samples (default: the built-in MNIST one).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images: only the classifier's verdict, not the W2 table of every solver.
    #[arg(long)]
    pub classifier_only: bool,
    /// Discrete flows: corrector strength (0: the plain discrete Euler sampler).
    #[arg(long, default_value_t = 0.0)]
    pub corrector: f64,
}

/// Options of `flowlab bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the workloads whose name contains this text (e.g. `4x512`, `moons`,
    /// `unet`, `conv`, `ops`).
    #[arg(long)]
    pub only: Option<String>,
    /// Device: cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The first line of an error's message (candle appends a backtrace to some).
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Parses a device name.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0)
            .map_err(|e| Error::config(format!("CUDA device unavailable: {}", first_line(&e)))),
        "metal" => Device::new_metal(0)
            .map_err(|e| Error::config(format!("Metal device unavailable: {}", first_line(&e)))),
        other => Err(Error::config(format!(
            "unknown device {other:?} (use cpu, cuda or metal)"
        ))),
    }
}

fn unknown(what: &str, got: &str, choices: &[&str]) -> Error {
    Error::config(format!(
        "unknown {what} {got:?}; choose one of: {}",
        choices.join(", ")
    ))
}

/// Builds the training config from the flags (over `--config` or the defaults).
pub fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io("cannot read", p, e))?;
            TrainConfig::from_json(&text).map_err(|e| match e {
                Error::Config(m) => Error::config(format!("{}: {m}", p.display())),
                other => other,
            })?
        }
        None => TrainConfig::default(),
    };
    if let Some(name) = &a.dataset {
        let kind = DatasetKind::from_name(name, a.mnist_dir.clone())
            .ok_or_else(|| unknown("dataset", name, &DatasetKind::names()))?;
        if kind.manifold().is_some() || cfg.dataset.manifold().is_some() {
            // Onto or off a manifold: the source, path and pairing follow.
            cfg = cfg.with_dataset(kind);
        } else {
            cfg.dataset = kind;
        }
    } else if let (Some(dir), DatasetKind::Mnist { .. }) = (&a.mnist_dir, &cfg.dataset) {
        cfg.dataset = DatasetKind::Mnist {
            dir: Some(dir.clone()),
        };
    }
    if let Some(noise) = a.noise {
        match &mut cfg.dataset {
            DatasetKind::Toy2d { toy } => *toy = toy.with_noise(noise),
            DatasetKind::Mnist { .. } | DatasetKind::Manifold { .. } => {
                return Err(Error::config("--noise applies to 2D datasets only"));
            }
        }
    }
    if let Some(name) = &a.source {
        let mut names = vec!["gaussian", "uniform-sphere", "uniform-torus"];
        names.extend(crate::data::Toy2d::ALL.iter().map(|t| t.name()));
        cfg.source = Source::from_name(name).ok_or_else(|| unknown("source", name, &names))?;
    }
    if let Some(name) = &a.coupling {
        cfg.coupling = Coupling::from_name(name, a.sinkhorn_reg)
            .ok_or_else(|| unknown("coupling", name, &Coupling::ALL.map(|c| c.name())))?;
    }
    if a.coupling_per_class {
        cfg.coupling_per_class = true;
    }
    if a.dequantize {
        cfg.dequantize = true;
    }
    if let Some(v) = a.steps {
        cfg.steps = v;
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = a.batch {
        cfg.batch_size = v;
    }
    if let Some(v) = a.lr {
        cfg.optimizer.lr = v;
    }
    if let Some(v) = a.weight_decay {
        cfg.optimizer.weight_decay = v;
    }
    if let Some(v) = a.grad_clip {
        cfg.optimizer.grad_clip = (v > 0.0).then_some(v);
    }
    if let Some(v) = a.warmup {
        cfg.optimizer.warmup_steps = v;
    }
    if let Some(v) = a.ema {
        cfg.ema_decay = (v > 0.0).then_some(v);
    }
    match a.model.as_deref() {
        None => {}
        Some("mlp") if !matches!(cfg.model.network(), ModelConfig::Mlp(_)) => {
            *cfg.model.network_mut() = ModelConfig::Mlp(Default::default())
        }
        Some("unet") if !matches!(cfg.model.network(), ModelConfig::Unet(_)) => {
            *cfg.model.network_mut() = ModelConfig::Unet(Default::default())
        }
        Some("mlp" | "unet") => {}
        Some(name) => return Err(unknown("model", name, &["mlp", "unet"])),
    }
    let mlp_flags = a.width.is_some() || a.depth.is_some() || a.activation.is_some();
    match cfg.model.network_mut() {
        ModelConfig::Mlp(mlp) => {
            if let Some(v) = a.width {
                mlp.width = v;
            }
            if let Some(v) = a.depth {
                mlp.depth = v;
            }
            if let Some(name) = &a.activation {
                mlp.activation = Activation::from_name(name).ok_or_else(|| {
                    unknown("activation", name, &Activation::ALL.map(|x| x.name()))
                })?;
            }
        }
        ModelConfig::Unet(_) if mlp_flags => {
            return Err(Error::config(
                "--width, --depth and --activation apply to the MLP; set the UNet in a --config JSON",
            ));
        }
        ModelConfig::Unet(u) => {
            if let Some(c) = a.classes {
                u.classes = c;
            }
        }
        ModelConfig::Tokens(_) => {}
    }
    if a.classes.is_some_and(|c| c > 0) && !matches!(cfg.model.network(), ModelConfig::Unet(_)) {
        return Err(Error::config("--classes needs --model unet"));
    }
    if let Some(p) = a.label_dropout {
        cfg.label_dropout = p;
    }
    if let Some(name) = &a.scheduler {
        cfg.scheduler = Scheduler::from_name(name)
            .ok_or_else(|| unknown("scheduler", name, &Scheduler::ALL.map(|x| x.name())))?;
    }
    if let Some(name) = &a.time_sampling {
        cfg.time_sampling = TimeSampling::from_name(name)
            .ok_or_else(|| unknown("time sampling", name, &["uniform", "logit-normal"]))?;
    }
    apply_discrete_flags(a, &mut cfg)?;
    cfg.validate()?;
    Ok(cfg)
}

/// `--flow`, `--discrete-source`, `--levels`, `--kappa-power`, `--discrete-loss`.
fn apply_discrete_flags(a: &TrainArgs, cfg: &mut TrainConfig) -> Result<()> {
    use crate::discrete::{DiscreteConfig, DiscreteLoss, DiscreteSource};
    match a.flow.as_deref() {
        None => {}
        Some("continuous") => *cfg = cfg.with_discrete(None),
        Some("discrete") if cfg.discrete.is_none() => {
            let dc = if cfg.dataset.is_image() {
                DiscreteConfig::for_images()
            } else {
                DiscreteConfig::default()
            };
            *cfg = cfg.with_discrete(Some(dc));
        }
        Some("discrete") => {}
        Some(name) => return Err(unknown("flow", name, &["continuous", "discrete"])),
    }
    let flags = a.discrete_source.is_some()
        || a.levels.is_some()
        || a.kappa_power.is_some()
        || a.discrete_loss.is_some();
    let Some(mut dc) = cfg.discrete else {
        if flags {
            return Err(Error::config(
                "--discrete-source, --levels, --kappa-power and --discrete-loss need --flow discrete",
            ));
        }
        return Ok(());
    };
    if let Some(name) = &a.discrete_source {
        dc.source = DiscreteSource::from_name(name).ok_or_else(|| {
            unknown(
                "discrete source",
                name,
                &DiscreteSource::ALL.map(|s| s.name()),
            )
        })?;
    }
    if let Some(v) = a.levels {
        dc.levels = v;
    }
    if let Some(v) = a.kappa_power {
        dc.kappa_power = v;
    }
    if let Some(name) = &a.discrete_loss {
        dc.loss = DiscreteLoss::from_name(name)
            .ok_or_else(|| unknown("discrete loss", name, &DiscreteLoss::ALL.map(|s| s.name())))?;
    }
    *cfg = cfg.with_discrete(Some(dc));
    Ok(())
}

fn solver_config(a: &SolverArgs, base: SolverConfig) -> Result<SolverConfig> {
    let mut s = base;
    if let Some(name) = &a.solver {
        s.kind = SolverKind::from_name(name)
            .ok_or_else(|| unknown("solver", name, &SolverKind::ALL.map(|x| x.name())))?;
    }
    if let Some(v) = a.steps {
        s.steps = v;
    }
    if let Some(v) = a.rtol {
        s.rtol = v;
    }
    if let Some(v) = a.atol {
        s.atol = v;
    }
    s.validate()?;
    Ok(s)
}

/// Two independent sets of `n` fresh held-out points (draws 0 and 1 of the eval
/// stream): in data space for 2D sets, in model space for images. The dataset is
/// loaded once.
fn reference_sets(
    meta: &CheckpointMeta,
    n: usize,
    seed: u64,
    mnist_dir: Option<&Path>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut kind = meta.config.dataset.clone();
    if let (DatasetKind::Mnist { dir }, Some(d)) = (&mut kind, mnist_dir) {
        *dir = Some(d.to_path_buf());
    }
    let ds = kind.build()?;
    let draw = |index: u64| {
        let mut pts = ds.sample_held_out(n, &mut stream_rng(seed, Stream::Eval, index));
        if !kind.is_image() {
            ds.to_data_space(&mut pts);
        }
        pts
    };
    Ok((draw(0), draw(1)))
}

/// Samples (model space) of a checkpoint's model: the ODE flow with `solver`
/// (guided towards `labels` when given), or for a discrete flow the discrete
/// Euler sampler with `solver.steps` steps and corrector strength `corrector`.
#[allow(clippy::too_many_arguments)]
pub fn draw_samples(
    model: &dyn crate::model::FlowModel,
    cfg: &TrainConfig,
    sample_shape: &[usize],
    n: usize,
    seed: u64,
    solver: &SolverConfig,
    corrector: f64,
    labels: Option<&[u32]>,
    guidance: f64,
    keep_intermediates: bool,
    dev: &Device,
) -> Result<crate::sample::Samples> {
    if let Some(dc) = &cfg.discrete {
        let sampling = crate::discrete::DiscreteSampling {
            steps: if solver.kind == SolverKind::Dopri5 {
                crate::discrete::DiscreteSampling::default().steps
            } else {
                solver.steps
            },
            corrector,
            guidance,
        };
        let labels = labels.filter(|_| model.classes() > 0);
        return crate::discrete::sample_values(
            model,
            dc,
            sample_shape,
            n,
            seed,
            &sampling,
            labels,
            keep_intermediates,
            dev,
        );
    }
    match labels {
        Some(l) if model.classes() > 0 => {
            crate::sample::sample_guided(model, sample_shape, l, guidance, seed, solver, dev)
        }
        _ => sample(
            model,
            &cfg.source,
            sample_shape,
            n,
            seed,
            solver,
            keep_intermediates,
            dev,
        ),
    }
}

/// W2 of samples (data space) to fresh held-out data, with the data-vs-data
/// floor, and the samples themselves.
pub fn heldout_w2(
    model: &dyn crate::model::FlowModel,
    meta: &CheckpointMeta,
    solver: &SolverConfig,
    n: usize,
    seed: u64,
) -> Result<(f64, f64, Vec<f32>)> {
    let mut s = draw_samples(
        model,
        &meta.config,
        &meta.sample_shape,
        n,
        seed,
        solver,
        0.0,
        None,
        1.0,
        false,
        &Device::Cpu,
    )?
    .data;
    meta.to_data_space(&mut s);
    let (a, b) = reference_sets(meta, n, seed, None)?;
    let dim = meta.sample_shape.iter().product();
    Ok((w2_exact(&s, &a, dim)?, w2_exact(&a, &b, dim)?, s))
}

/// For a model on a manifold, from its `samples`: their largest distance from
/// the manifold and, for a checkerboard, the share on the dark squares (`None`
/// for the mixtures). `None` for flat data.
pub fn manifold_report(meta: &CheckpointMeta, samples: &[f32]) -> Option<(f64, Option<f64>)> {
    let DatasetKind::Manifold { set } = &meta.config.dataset else {
        return None;
    };
    let off = set.manifold().max_off_manifold(samples);
    let share = set.has_support_test().then(|| set.support_share(samples));
    Some((off, share))
}

fn print_manifold_report(report: Option<(f64, Option<f64>)>, solver: &SolverConfig) {
    if let Some((off, share)) = report {
        let squares = share.map_or_else(String::new, |s| {
            format!(", {:.1} % on the dark squares", 100.0 * s)
        });
        println!(
            "on the manifold ({}): largest distance off it {off:.2e}{squares}",
            solver.describe()
        );
    }
}

fn run_train(a: &TrainArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let mut tr = match &a.resume {
        Some(p) => {
            let ck = Checkpoint::load(p, &dev)?;
            let mut tr = ck.into_trainer(&dev, p)?;
            if let Some(s) = a.steps {
                if s < tr.step_count() {
                    return Err(Error::config(format!(
                        "--steps {s} is below the {} steps already done in {}",
                        tr.step_count(),
                        p.display()
                    )));
                }
                tr.set_total_steps(s)?;
            }
            eprintln!("resuming {} at step {}", p.display(), tr.step_count());
            tr
        }
        None => {
            let cfg = train_config(a)?;
            if a.print_config {
                println!("{}", cfg.to_json());
                return Ok(());
            }
            Trainer::new(cfg, &dev)?
        }
    };
    let cfg = tr.config().clone();
    crate::fsutil::ensure_parent(&a.out)?;
    let params = tr.params().count();
    eprintln!(
        "training {} on {} for {} steps (batch {}, {} parameters, seed {})",
        describe_model(&cfg.model),
        cfg.dataset.name(),
        cfg.steps,
        cfg.batch_size,
        params,
        cfg.seed
    );
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(tr.step_count());
    let started = Instant::now();
    let mut smooth: Option<f32> = None;
    let mut held: Option<f32> = None;
    let mut save_error = None;
    let out = a.out.clone();
    let save_every = a.save_every.filter(|&s| s > 0);
    // Ctrl-C stops between two steps; the checkpoint is saved below.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed)).ok();
    }
    let result = {
        let mut on_step = |r: &crate::train::StepReport| {
            smooth = Some(smooth.map_or(r.loss, |s| 0.98 * s + 0.02 * r.loss));
            if r.held_out_loss.is_some() {
                held = r.held_out_loss;
            }
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.4} held-out {} lr {:.2e} {:.1} steps/s",
                smooth.unwrap_or(r.loss),
                held.map_or_else(|| "-".into(), |h| format!("{h:.4}")),
                r.lr,
                r.steps_per_sec
            ));
            if interrupted.load(std::sync::atomic::Ordering::Relaxed)
                || save_every.is_some_and(|e| r.step.is_multiple_of(e))
            {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        loop {
            match tr.run(&mut on_step) {
                Ok(crate::train::RunEnd::Stopped) => {
                    if let Err(e) = Checkpoint::from_trainer(&tr).and_then(|c| c.save(&out)) {
                        save_error = Some(e);
                        break Ok(());
                    }
                    if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                        break Err(Error::Interrupted);
                    }
                }
                Ok(crate::train::RunEnd::Finished) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    };
    bar.finish();
    if let Some(e) = save_error {
        return Err(e);
    }
    // Keep the last good state even when training diverged or was interrupted.
    let checkpoint = Checkpoint::from_trainer(&tr)?;
    checkpoint.save(&a.out)?;
    if let Err(e) = result {
        eprintln!(
            "saved the last good state (step {}) to {}; continue with --resume {}",
            tr.step_count(),
            a.out.display(),
            a.out.display()
        );
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "saved {} (step {}, {:.1} s)",
        a.out.display(),
        tr.step_count(),
        secs
    );
    if let Some(h) = tr.held_out_loss()? {
        println!("held-out loss: {h:.4}");
    }
    if !cfg.dataset.is_image() {
        let (w2, floor, samples) = heldout_w2(
            tr.sampling_model(),
            &checkpoint.meta,
            &cfg.solver,
            2000,
            cfg.seed,
        )?;
        println!(
            "held-out W2 ({}, 2000 samples): {w2:.4}  (two independent data sets: {floor:.4}, ratio {:.2})",
            sampler_name(&cfg, &cfg.solver, 0.0),
            w2 / floor
        );
        print_manifold_report(manifold_report(&checkpoint.meta, &samples), &cfg.solver);
    }
    Ok(())
}

/// The sampler of a run in messages: the ODE solver, or the discrete Euler sampler.
fn sampler_name(cfg: &TrainConfig, solver: &SolverConfig, corrector: f64) -> String {
    match &cfg.discrete {
        Some(_) => format!(
            "discrete Euler, {} steps, corrector {corrector}",
            solver.steps
        ),
        None => solver.describe(),
    }
}

fn describe_model(m: &ModelConfig) -> String {
    match m {
        ModelConfig::Tokens(t) => format!(
            "a token network over {} levels: {}",
            t.levels,
            describe_model(&t.inner)
        ),
        ModelConfig::Mlp(c) => format!("an MLP {}x{} ({})", c.depth, c.width, c.activation.name()),
        ModelConfig::Unet(c) => format!(
            "a UNet (channels {:?}, {} block(s) per level{})",
            c.channels,
            c.blocks,
            if c.attention { ", attention" } else { "" }
        ),
    }
}

fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn run_sample(a: &SampleArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let ext = extension(&a.out);
    if !["csv", "png", "idx"].contains(&ext.as_str()) {
        return Err(Error::config(format!(
            "{}: the output must end in .csv, .png or .idx",
            a.out.display()
        )));
    }
    if a.n == 0 {
        return Err(Error::config("-n must be at least 1"));
    }
    let ck = Checkpoint::load(&a.checkpoint, &dev)?;
    let model = ck.model(&dev, !a.no_ema, &a.checkpoint)?;
    let meta = ck.meta;
    let image = meta.config.dataset.is_image();
    if image && ext == "csv" {
        return Err(Error::config(
            "CSV output is for 2D datasets; use .idx or .png for images",
        ));
    }
    if !image && ext == "idx" {
        return Err(Error::config(
            "IDX output is for image datasets; use .csv or .png for 2D",
        ));
    }
    let solver = solver_config(&a.solver, meta.config.solver)?;
    let started = Instant::now();
    if image && a.trajectory.is_some() {
        return Err(Error::config("--trajectory is for 2D datasets"));
    }
    let classes = model.classes();
    if classes == 0 && a.class.is_some() {
        return Err(Error::config(format!(
            "{}: the model is not class-conditional, so --class does not apply",
            a.checkpoint.display()
        )));
    }
    if a.class.is_some_and(|c| c as usize >= classes) {
        return Err(Error::config(format!(
            "--class must be in 0..{classes} for this model"
        )));
    }
    // Conditional models: the requested class, or every class in turn
    // (`per_class` samples each, one grid row per class).
    let per_class = a.n.div_ceil(classes.max(1));
    if classes > 0 && a.scheduler.is_some() {
        return Err(Error::config(
            "--scheduler applies to unconditional models (class-conditional sampling keeps the trained scheduler)",
        ));
    }
    let discrete = meta.config.discrete.is_some();
    if discrete && a.scheduler.is_some() {
        return Err(Error::config(
            "--scheduler applies to continuous flows; a discrete flow has its kappa scheduler",
        ));
    }
    let s = if classes > 0 {
        if a.trajectory.is_some() {
            return Err(Error::config("--trajectory is for unconditional 2D models"));
        }
        let labels: Vec<u32> = (0..a.n)
            .map(|i| a.class.unwrap_or(((i / per_class).min(classes - 1)) as u32))
            .collect();
        draw_samples(
            model.as_ref(),
            &meta.config,
            &meta.sample_shape,
            a.n,
            a.seed,
            &solver,
            a.solver.corrector,
            Some(&labels),
            a.guidance,
            false,
            &dev,
        )?
    } else if discrete {
        draw_samples(
            model.as_ref(),
            &meta.config,
            &meta.sample_shape,
            a.n,
            a.seed,
            &solver,
            a.solver.corrector,
            None,
            1.0,
            a.trajectory.is_some(),
            &dev,
        )?
    } else {
        let target = match &a.scheduler {
            None => meta.config.scheduler,
            Some(name) => Scheduler::from_name(name)
                .ok_or_else(|| unknown("scheduler", name, &Scheduler::ALL.map(|s| s.name())))?,
        };
        let changed =
            crate::flow::SchedulerChange::new(model.as_ref(), meta.config.scheduler, target);
        let field: &dyn VelocityField = if target == meta.config.scheduler {
            model.as_ref()
        } else {
            &changed
        };
        sample(
            field,
            &meta.config.source,
            &meta.sample_shape,
            a.n,
            a.seed,
            &solver,
            a.trajectory.is_some(),
            &dev,
        )?
    };
    let secs = started.elapsed().as_secs_f64();
    let mut data = s.data;
    meta.to_data_space(&mut data);
    crate::fsutil::ensure_parent(&a.out)?;
    let manifold = meta.config.dataset.manifold();
    match (ext.as_str(), image) {
        ("csv", _) => {
            let text = points_csv(&data, manifold, None);
            crate::fsutil::write_atomic(&a.out, text.as_bytes())?;
        }
        ("png", false) => {
            let flat = match manifold {
                Some(m) => chart_points(m, &data),
                None => data.clone(),
            };
            crate::plot::save_png(&crate::plot::scatter_png(&flat, None, 600), &a.out)?
        }
        ("png", true) => {
            let (rows, cols) = image_size(&meta.sample_shape);
            let columns = if classes > 0 && a.class.is_none() {
                per_class
            } else {
                (a.n as f64).sqrt().ceil() as usize
            };
            crate::plot::save_png(&crate::plot::image_grid(&data, rows, cols, columns), &a.out)?;
        }
        _ => {
            let (rows, cols) = image_size(&meta.sample_shape);
            let bytes: Vec<u8> = data
                .iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect();
            crate::data::idx::write_idx(&a.out, &[a.n, rows, cols], &bytes)?;
        }
    }
    if let Some(path) = &a.trajectory {
        let mut text = String::new();
        for (t, state) in s.times.iter().zip(&s.states) {
            let mut state = state.clone();
            meta.to_data_space(&mut state);
            let part = points_csv(&state, manifold, Some(*t));
            let skip = if text.is_empty() { 0 } else { 1 };
            for line in part.lines().skip(skip) {
                text.push_str(line);
                text.push('\n');
            }
        }
        crate::fsutil::ensure_parent(path)?;
        crate::fsutil::write_atomic(path, text.as_bytes())?;
        println!(
            "wrote {} states per sample to {}",
            s.times.len(),
            path.display()
        );
    }
    let sampler = sampler_name(&meta.config, &solver, a.solver.corrector);
    println!(
        "wrote {} samples to {} ({sampler}, NFE {}, {:.2} s)",
        a.n,
        a.out.display(),
        s.nfe,
        secs
    );
    Ok(())
}

/// Points as CSV: `x,y` for 2D data, `x,y,z` on the sphere, the angles
/// `phi,psi` (radians) on the torus; with `t`, each row starts `t,i,`.
fn points_csv(data: &[f32], manifold: Option<crate::flow::Manifold>, t: Option<f64>) -> String {
    use crate::flow::Manifold;
    let (header, dim) = match manifold {
        None => ("x,y", 2),
        Some(Manifold::Sphere) => ("x,y,z", 3),
        Some(Manifold::Torus) => ("phi,psi", 4),
    };
    let mut text = match t {
        Some(_) => format!("t,i,{header}\n"),
        None => format!("{header}\n"),
    };
    for (i, p) in data.chunks_exact(dim).enumerate() {
        let values: Vec<String> = match manifold {
            Some(Manifold::Torus) => crate::flow::manifold::torus_angles(p)
                .iter()
                .map(|v| v.to_string())
                .collect(),
            _ => p.iter().map(|v| v.to_string()).collect(),
        };
        if let Some(t) = t {
            text.push_str(&format!("{t},{i},"));
        }
        text.push_str(&values.join(","));
        text.push('\n');
    }
    text
}

/// Manifold points in map coordinates (see [`crate::flow::Manifold::chart`]), flattened `(n, 2)`.
fn chart_points(m: crate::flow::Manifold, data: &[f32]) -> Vec<f32> {
    data.chunks_exact(m.ambient_dim())
        .flat_map(|p| m.chart(p))
        .collect()
}

fn image_size(shape: &[usize]) -> (usize, usize) {
    match shape {
        [_, r, c] | [r, c] => (*r, *c),
        _ => (1, shape.iter().product()),
    }
}

fn run_eval(a: &EvalArgs) -> Result<()> {
    let dev = device(&a.device)?;
    if a.n < 2 {
        return Err(Error::config("-n must be at least 2"));
    }
    let loaded = LoadedModel::load(&a.checkpoint, &dev)?;
    let meta = &loaded.meta;
    let image = meta.config.dataset.is_image();
    let dim: usize = meta.sample_shape.iter().product();
    let (reference, reference2) = reference_sets(meta, a.n, a.seed, a.mnist_dir.as_deref())?;
    let space = if image {
        "model space, pixels in [-1, 1]"
    } else {
        "data space"
    };
    println!(
        "{} (step {}, {}), {} samples vs {} fresh held-out points, {space}",
        a.checkpoint.display(),
        meta.step,
        meta.config.dataset.name(),
        a.n,
        a.n
    );
    if image {
        judge_images(a, &loaded, &dev)?;
        if a.classifier_only {
            return Ok(());
        }
    }
    println!(
        "floor (two independent held-out sets): W2 {:.4}  sliced-W2 {:.4}",
        w2_exact(&reference, &reference2, dim)?,
        sliced_w2(&reference, &reference2, dim, 256, a.seed)?
    );
    let discrete = meta.config.discrete;
    if let Some(dc) = &discrete {
        println!(
            "discrete flow: {} source, {} levels, kappa_t = t^{}, {} loss; corrector {}",
            dc.source.name(),
            dc.levels,
            dc.kappa_power,
            dc.loss.name(),
            a.corrector
        );
    }
    if meta.config.dataset.manifold().is_none() && !image && discrete.is_none() {
        // How straight the learned flow is: states of 100 Euler steps (model space).
        let s = sample(
            loaded.model.as_ref(),
            &meta.config.source,
            &meta.sample_shape,
            a.n.min(2000),
            a.seed,
            &SolverConfig::fixed(SolverKind::Euler, 100),
            true,
            &dev,
        )?;
        let (straight, cost) = crate::metrics::straightness(&s.times, &s.states, dim)?;
        println!(
            "source {}, coupling {}{}: straightness {straight:.4} (0 = straight lines; model space, Euler/100), mean squared displacement |x1 - x0|^2 {cost:.4}",
            meta.config.source.name(),
            meta.config.coupling.name(),
            if meta.config.coupling_per_class {
                " within classes"
            } else {
                ""
            },
        );
    }
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>10} {:>8}",
        "solver", "steps", "NFE", "W2", "sliced-W2", "secs"
    );
    let mut configs: Vec<SolverConfig> = Vec::new();
    let kinds: &[SolverKind] = if discrete.is_some() {
        // The discrete Euler sampler.
        &[SolverKind::Euler]
    } else {
        &[
            SolverKind::Euler,
            SolverKind::Midpoint,
            SolverKind::Heun,
            SolverKind::Rk4,
        ]
    };
    for &kind in kinds {
        for &s in &a.steps {
            configs.push(SolverConfig::fixed(kind, s));
        }
    }
    if discrete.is_none() {
        configs.push(SolverConfig::dopri5(1e-5, 1e-5));
    }
    for solver in configs {
        let started = Instant::now();
        let s = draw_samples(
            loaded.model.as_ref(),
            &meta.config,
            &meta.sample_shape,
            a.n,
            a.seed,
            &solver,
            a.corrector,
            None,
            1.0,
            false,
            &dev,
        )?;
        let secs = started.elapsed().as_secs_f64();
        let mut x = s.data;
        if !image {
            meta.to_data_space(&mut x);
        }
        let steps = if solver.kind == SolverKind::Dopri5 {
            "-".to_string()
        } else {
            solver.steps.to_string()
        };
        println!(
            "{:<10} {:>6} {:>6} {:>10.4} {:>10.4} {:>8.2}",
            solver.kind.name(),
            steps,
            s.nfe,
            w2_exact(&x, &reference, dim)?,
            sliced_w2(&x, &reference, dim, 256, a.seed)?,
            secs
        );
        if let DatasetKind::Manifold { set } = &meta.config.dataset {
            let squares = if set.has_support_test() {
                format!(
                    "{:.1} % on the dark squares, ",
                    100.0 * set.support_share(&x)
                )
            } else {
                String::new()
            };
            println!(
                "{:<10} {squares}largest distance off the {} {:.1e}",
                "",
                set.manifold().name(),
                set.manifold().max_off_manifold(&x)
            );
        }
    }
    Ok(())
}

/// The classifier's verdict on an image checkpoint: class accuracy of guided
/// samples (class-conditional models) and the classifier-based Fréchet distance.
fn judge_images(a: &EvalArgs, loaded: &LoadedModel, dev: &Device) -> Result<()> {
    let (classifier, _) = match &a.classifier {
        Some(p) => crate::classifier::Classifier::load(p, dev)?,
        None => crate::classifier::Classifier::embedded(dev)?,
    };
    let set = match &a.mnist_dir {
        Some(dir) => crate::data::mnist::Mnist::from_dir(dir)?,
        None => crate::data::mnist::Mnist::embedded()?,
    };
    let meta = &loaded.meta;
    let solver = meta.config.solver;
    let model = loaded.model.as_ref();
    let classes = model.classes();
    let started = Instant::now();
    let labels: Option<Vec<u32>> =
        (classes > 0).then(|| (0..a.n).map(|i| (i % classes) as u32).collect());
    let samples = draw_samples(
        model,
        &meta.config,
        &meta.sample_shape,
        a.n,
        a.seed,
        &solver,
        a.corrector,
        labels.as_deref(),
        a.guidance,
        false,
        dev,
    )?
    .data;
    let q = crate::classifier::judge(
        &classifier,
        &samples,
        labels.as_deref(),
        &set.test,
        &set.train,
        dev,
    )?;
    let how = if classes > 0 {
        format!("class-conditional, guidance {}", a.guidance)
    } else {
        "unconditional".to_string()
    };
    let sampler = match &meta.config.discrete {
        Some(dc) => format!(
            "discrete Euler, {} steps, {} grey levels, corrector {}",
            solver.steps, dc.levels, a.corrector
        ),
        None => solver.describe(),
    };
    println!(
        "classifier verdict on {} samples ({how}, {sampler}, {:.1} s):",
        a.n,
        started.elapsed().as_secs_f64()
    );
    if let Some(acc) = q.accuracy {
        println!("  recognised as the requested digit: {:.1} %", 100.0 * acc);
    }
    println!(
        "  classifier-feature Frechet distance (not Inception FID): {:.3}  (real test vs real train images: {:.3})",
        q.frechet, q.frechet_floor
    );
    Ok(())
}

/// `flowlab bench`: the report of [`crate::bench::run`], printed and optionally written.
fn run_bench(a: &BenchArgs) -> Result<()> {
    let opts = crate::bench::BenchOptions {
        seconds: a.seconds,
        only: a.only.clone(),
        device: device(&a.device)?,
        device_name: a.device.clone(),
    };
    let table = crate::bench::run(&opts)?;
    print!("{table}");
    if let Some(p) = &a.out {
        crate::fsutil::write_atomic(p, table.as_bytes())?;
    }
    Ok(())
}

fn run_train_classifier(a: &ClassifierArgs) -> Result<()> {
    if a.steps == 0 || a.batch == 0 {
        return Err(Error::config("--steps and --batch must be at least 1"));
    }
    let dev = Device::Cpu;
    let set = match &a.mnist_dir {
        Some(dir) => crate::data::mnist::Mnist::from_dir(dir)?,
        None => crate::data::mnist::Mnist::embedded()?,
    };
    let classes = set.train.classes();
    let mut model = crate::classifier::Classifier::new(classes, a.seed, &dev)?;
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    model.train(&set.train, a.steps, a.batch, a.seed, &dev, |s, loss| {
        bar.set_position(s);
        bar.set_message(format!("loss {loss:.4}"));
    })?;
    bar.finish_and_clear();
    let accuracy = model.accuracy(&set.test, None, &dev)?;
    let meta = crate::classifier::ClassifierMeta {
        classes,
        steps: a.steps,
        batch_size: a.batch,
        seed: a.seed,
        test_accuracy: accuracy,
    };
    model.save(&a.out, &meta)?;
    println!(
        "test accuracy {:.2} % on {} images; wrote {} ({:.1} s)",
        100.0 * accuracy,
        set.test.n,
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs a parsed command.
pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::Train(a) => run_train(a),
        Command::Sample(a) => run_sample(a),
        Command::Eval(a) => run_eval(a),
        Command::Bench(a) => run_bench(a),
        Command::TrainClassifier(a) => run_train_classifier(a),
        Command::ExportWeights(a) => run_export_weights(a),
        Command::Likelihood(a) => run_likelihood(a),
    }
}

fn run_likelihood(a: &LikelihoodArgs) -> Result<()> {
    use crate::solver::likelihood::{Divergence, LikelihoodConfig, log_likelihood};
    if a.n == 0 || a.steps == 0 || a.batch == 0 {
        return Err(Error::config("-n, --steps and --batch must be at least 1"));
    }
    let dev = Device::Cpu;
    let loaded = LoadedModel::load(&a.checkpoint, &dev)?;
    let meta = &loaded.meta;
    if meta.config.source != Source::Gaussian {
        return Err(Error::config(format!(
            "the likelihood needs the source's density; {} is sampled, not a closed-form density (train with the gaussian source)",
            meta.config.source.name()
        )));
    }
    let image = meta.config.dataset.is_image();
    let dim: usize = meta.sample_shape.iter().product();
    let data = meta.config.dataset.build()?;
    let mut rng = stream_rng(a.seed, Stream::Eval, 0);
    let mut x = data.sample_held_out(a.n, &mut rng);
    let n = x.len() / dim.max(1);
    if image {
        crate::train::trainer::dequantize(&mut x, &mut rng);
    }
    let probes = a.probes.unwrap_or(if image { 1 } else { 0 });
    let divergence = if probes == 0 {
        Divergence::Exact
    } else {
        Divergence::Hutchinson { probes }
    };
    let cfg = LikelihoodConfig {
        steps: a.steps,
        divergence,
        seed: a.seed,
    };
    let started = Instant::now();
    let mut log_p = Vec::with_capacity(n);
    for (i, chunk) in x.chunks(a.batch * dim).enumerate() {
        let m = chunk.len() / dim;
        let mut shape = vec![m];
        shape.extend_from_slice(&meta.sample_shape);
        let t = candle_core::Tensor::from_vec(chunk.to_vec(), shape, &dev)?;
        let l = log_likelihood(
            loaded.model.as_ref(),
            &t,
            &LikelihoodConfig {
                seed: cfg.seed.wrapping_add(i as u64),
                ..cfg
            },
        )?;
        log_p.extend(l.log_p);
    }
    let mean = log_p.iter().sum::<f64>() / n.max(1) as f64;
    let sd = (log_p.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64).sqrt();
    let se = sd / (n.max(1) as f64).sqrt();
    let how = match divergence {
        Divergence::Exact => "exact divergence".to_string(),
        Divergence::Hutchinson { probes } => format!("Hutchinson, {probes} probe(s)"),
    };
    let secs = started.elapsed().as_secs_f64();
    if image {
        // log p over pixels in [0, 256)^d: x = pixels / 127.5 - 1.
        let shift = dim as f64 * 127.5f64.ln();
        let bpd = -(mean - shift) / (dim as f64 * std::f64::consts::LN_2);
        let bpd_se = se / (dim as f64 * std::f64::consts::LN_2);
        println!(
            "{} test images, RK4 {} steps backwards ({how}), uniform dequantisation: {bpd:.3} ± {bpd_se:.3} bits/dim ({secs:.1} s)",
            n, a.steps
        );
        if !meta.config.dequantize {
            println!(
                "note: this model was trained on exact grey levels (not --dequantize), so its density piles up on them and bits/dim can come out too low, even negative"
            );
        }
    } else {
        let scale = meta.standardizer.map_or(1.0, |s| f64::from(s.scale));
        let shift = dim as f64 * scale.ln();
        println!(
            "{} held-out points, RK4 {} steps backwards ({how}): NLL {:.4} ± {:.4} nats (data space; {:.4} in model space) ({secs:.1} s)",
            n,
            a.steps,
            -(mean - shift),
            se,
            -mean
        );
    }
    Ok(())
}

fn run_export_weights(a: &ExportArgs) -> Result<()> {
    let full = Checkpoint::load(&a.checkpoint, &Device::Cpu)?;
    let slim = full.weights_only();
    // Check that it rebuilds its model before writing it.
    slim.model(&Device::Cpu, true, &a.out)?;
    slim.save(&a.out)?;
    let size = std::fs::metadata(&a.out).map_or(0, |m| m.len());
    println!(
        "wrote {} ({:.1} MB, step {}, {} parameters)",
        a.out.display(),
        size as f64 / 1e6,
        slim.meta.step,
        slim.meta.param_count
    );
    Ok(())
}
