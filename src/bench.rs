//! Speed measurements behind `flowlab bench`: training and sampling throughput
//! of the default models, and per-op figures for the CPU kernels next to
//! candle's own ops. `benches/pytorch_*.py` measure the same workloads in
//! PyTorch so that ratios are taken on one machine.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use crate::Result;
use crate::data::DatasetKind;
use crate::model::ops::{self, Conv2dParams, GroupNormParams};
use crate::model::{MlpConfig, ModelConfig, UnetConfig};
use crate::solver::{SolverConfig, SolverKind};
use crate::train::{TrainConfig, Trainer};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Seconds per measurement (at least 3 repetitions are always run).
    pub seconds: f64,
    /// Only workloads whose name contains this text.
    pub only: Option<String>,
    /// Where to run.
    pub device: Device,
    /// The device's name for the report.
    pub device_name: String,
}

impl BenchOptions {
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| name.to_lowercase().contains(&o.to_lowercase()))
    }
}

/// Runs `f` once to warm up, then repeatedly for `seconds` (at least 3 times);
/// returns calls per second.
fn rate(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < seconds || n < 3 {
        f()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The UNet benchmarked (and used for MNIST): channels 32/64/128, one block per
/// level, attention at 7x7, batch 128.
pub fn unet_bench_config() -> TrainConfig {
    TrainConfig {
        dataset: DatasetKind::Mnist { dir: None },
        model: ModelConfig::Unet(UnetConfig::default()),
        batch_size: 128,
        held_out_every: 0,
        ..Default::default()
    }
}

/// One training workload: its config and the batch it samples at.
struct Workload {
    name: &'static str,
    cfg: TrainConfig,
    sample_batch: usize,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "4x512 SiLU MLP, batch 4096",
            cfg: TrainConfig {
                model: ModelConfig::Mlp(MlpConfig {
                    width: 512,
                    depth: 4,
                    ..Default::default()
                }),
                batch_size: 4096,
                held_out_every: 0,
                ..Default::default()
            },
            sample_batch: 4096,
        },
        Workload {
            name: "default moons (3x256 SiLU MLP, batch 512)",
            cfg: TrainConfig {
                held_out_every: 0,
                ..Default::default()
            },
            sample_batch: 4096,
        },
        Workload {
            name: "MNIST UNet 32/64/128, batch 128",
            cfg: unet_bench_config(),
            sample_batch: 128,
        },
    ]
}

/// Training and sampling rows.
fn training_table(o: &BenchOptions) -> Result<String> {
    let mut out = String::from(
        "| workload | params | train steps/s | ms/step | samples/s (midpoint, 20 steps) | sample batch |\n|---|---|---|---|---|---|\n",
    );
    for w in workloads() {
        if !o.wants(w.name) {
            continue;
        }
        eprintln!("benchmarking {} ...", w.name);
        let mut tr = Trainer::new(w.cfg.clone(), &o.device)?;
        let params = tr.params().count();
        let steps = rate(o.seconds, || tr.step().map(|_| ()))?;
        let shape = tr.sample_shape().to_vec();
        let x0 = crate::rng::noise(w.sample_batch, &shape, 0, 0, &o.device)?;
        let solver = SolverConfig::fixed(SolverKind::Midpoint, 20);
        let model = tr.sampling_model();
        let sampling = rate(o.seconds, || {
            crate::sample::sample_from(model, &x0, &solver, false, None).map(|_| ())
        })?;
        out.push_str(&format!(
            "| {} | {params} | {steps:.2} | {:.1} | {:.0} | {} |\n",
            w.name,
            1000.0 / steps,
            sampling * w.sample_batch as f64,
            w.sample_batch
        ));
    }
    Ok(out)
}

/// A tensor of deterministic values in [-1, 1] that needs no gradient.
fn constant(shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(filled(shape, dev)?.as_tensor().detach())
}

/// A variable of deterministic values in [-1, 1].
fn filled(shape: &[usize], dev: &Device) -> Result<Var> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i.wrapping_mul(7919) % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
}

/// Milliseconds per call.
fn ms(seconds: f64, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(1000.0 / rate(seconds, f)?)
}

/// Per-op rows: the matmul reference, FlowLab's conv/GroupNorm/SiLU kernels, and
/// candle's ops on the same shapes.
fn ops_table(o: &BenchOptions) -> Result<String> {
    let dev = &o.device;
    let mut out = String::from("| op | shape | ms | GFLOP/s |\n|---|---|---|---|\n");
    let mut row = |op: &str, shape: &str, ms: f64, flop: Option<f64>| {
        let g = flop.map_or("".into(), |f| format!("{:.1}", f / ms / 1e6));
        out.push_str(&format!("| {op} | {shape} | {ms:.2} | {g} |\n"));
    };
    let s = o.seconds.min(3.0);

    eprintln!("benchmarking ops: matmul ...");
    let a = filled(&[4096, 512], dev)?;
    let b = filled(&[512, 512], dev)?;
    let t = ms(s, || Ok(a.matmul(&b).map(|_| ())?))?;
    row(
        "matmul (candle/gemm)",
        "4096x512 · 512x512",
        t,
        Some(2.0 * 4096.0 * 512.0 * 512.0),
    );
    let flop = 2.0 * 4096.0 * 512.0 * 512.0;
    let bt = b.t()?;
    let t = ms(s, || Ok(a.matmul(&bt).map(|_| ())?))?;
    row(
        "matmul, transposed rhs",
        "4096x512 · (512x512)ᵀ",
        t,
        Some(flop),
    );
    let at = a.t()?;
    let t = ms(s, || Ok(at.matmul(&a).map(|_| ())?))?;
    row(
        "matmul, transposed lhs",
        "(4096x512)ᵀ · 4096x512",
        t,
        Some(flop),
    );

    for (c_in, c_out, hw) in [(32usize, 32usize, 28usize), (64, 64, 14), (256, 128, 7)] {
        let (batch, k) = (128usize, 3usize);
        let shape = format!("{batch}x{c_in}x{hw}x{hw}, 3x3 → {c_out}");
        eprintln!("benchmarking ops: conv {shape} ...");
        let x = filled(&[batch, c_in, hw, hw], dev)?;
        let w = filled(&[c_out, c_in, k, k], dev)?;
        let bias = filled(&[c_out], dev)?;
        let p = Conv2dParams::same(1);
        let flop = 2.0 * (batch * c_out * hw * hw * c_in * k * k) as f64;
        let y = ops::conv2d(&x, &w, Some(&bias), p)?;
        let t = ms(s, || Ok(ops::conv2d(&x, &w, Some(&bias), p).map(|_| ())?))?;
        row("conv2d forward (FlowLab)", &shape, t, Some(flop));
        let g = constant(y.dims(), dev)?;
        let t = ms(s, || Ok(ops::conv2d_backward(&x, &w, &g, p).map(|_| ())?))?;
        row(
            "conv2d backward: dx, dw, db (FlowLab)",
            &shape,
            t,
            Some(2.0 * flop),
        );
        if c_in == 32 {
            let t = ms(s, || Ok(x.conv2d(&w, 1, 1, 1, 1).map(|_| ())?))?;
            row("conv2d forward (candle)", &shape, t, Some(flop));
            let yc = x.conv2d(&w, 1, 1, 1, 1)?;
            let t_all = ms(s, || Ok((&yc * &g)?.sum_all()?.backward().map(|_| ())?))?;
            row("conv2d backward (candle)", &shape, t_all, Some(2.0 * flop));
        }
    }

    let (batch, c, hw) = (128usize, 64usize, 14usize);
    let shape = format!("{batch}x{c}x{hw}x{hw}, 8 groups");
    eprintln!("benchmarking ops: group norm ...");
    let x = filled(&[batch, c, hw, hw], dev)?;
    let gamma = filled(&[c], dev)?;
    let beta = filled(&[c], dev)?;
    let ss = filled(&[batch, 2 * c], dev)?;
    let gw = constant(&[batch, c, hw, hw], dev)?;
    let p = GroupNormParams::new(8);
    let gn = || ops::group_norm(&x, &gamma, &beta, Some(&ss), true, p);
    let t = ms(s, || Ok(gn().map(|_| ())?))?;
    row(
        "GroupNorm + scale/shift + SiLU forward (FlowLab)",
        &shape,
        t,
        None,
    );
    let t = ms(s, || {
        Ok((gn()? * &gw)?.sum_all()?.backward().map(|_| ())?)
    })?;
    row("  ... forward + backward (FlowLab)", &shape, t, None);
    let reference = || -> Result<Tensor> {
        use candle_nn::Module as _;
        let gn = candle_nn::GroupNorm::new(
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            c,
            8,
            1e-5,
        )?;
        let y = gn.forward(&x)?;
        let scale = (ss.narrow(1, 0, c)?.reshape((batch, c, 1, 1))? + 1.0)?;
        let shift = ss.narrow(1, c, c)?.reshape((batch, c, 1, 1))?;
        Ok(y.broadcast_mul(&scale)?.broadcast_add(&shift)?.silu()?)
    };
    let t = ms(s, || reference().map(|_| ()))?;
    row(
        "GroupNorm + scale/shift + SiLU forward (candle ops)",
        &shape,
        t,
        None,
    );
    let t = ms(s, || {
        Ok((reference()? * &gw)?.sum_all()?.backward().map(|_| ())?)
    })?;
    row("  ... forward + backward (candle ops)", &shape, t, None);

    eprintln!("benchmarking ops: silu ...");
    let x = filled(&[4096, 512], dev)?;
    let gw = constant(&[4096, 512], dev)?;
    let t = ms(s, || Ok(ops::silu(&x).map(|_| ())?))?;
    row("SiLU forward (FlowLab)", "4096x512", t, None);
    let t = ms(s, || {
        Ok((ops::silu(&x)? * &gw)?.sum_all()?.backward().map(|_| ())?)
    })?;
    row("  ... forward + backward (FlowLab)", "4096x512", t, None);
    let t = ms(s, || Ok(x.silu().map(|_| ())?))?;
    row("SiLU forward (candle)", "4096x512", t, None);
    let t = ms(s, || {
        Ok((x.silu()? * &gw)?.sum_all()?.backward().map(|_| ())?)
    })?;
    row("  ... forward + backward (candle)", "4096x512", t, None);
    Ok(out)
}

/// Runs the selected benchmarks and returns the report as Markdown.
pub fn run(o: &BenchOptions) -> Result<String> {
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let mut report = format!(
        "flowlab {} on {} (CANDLE_NUM_THREADS={threads}, {} rayon threads, {} logical CPUs)\n\n",
        env!("CARGO_PKG_VERSION"),
        o.device_name,
        rayon::current_num_threads(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if workloads().iter().any(|w| o.wants(w.name)) {
        report.push_str(&training_table(o)?);
        report.push('\n');
    }
    if o.wants("ops") || o.wants("conv") {
        report.push_str(&ops_table(o)?);
    }
    #[cfg(feature = "gui")]
    if o.wants("gui frame") {
        let f = crate::app::frame_bench::frame_times(o.seconds)?;
        report.push_str(&format!(
            "\n| GUI frame while training (1280x800, every flow layer on; layout + tessellation, no GPU) | frames | mean | p95 | max | training meanwhile |\n|---|---|---|---|---|---|\n| default moons run | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} steps/s |\n",
            f.frames, f.mean_ms, f.p95_ms, f.max_ms, f.steps_per_sec
        ));
    }
    Ok(report)
}
