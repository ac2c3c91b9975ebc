//! The command line end to end, including the moons quality bar.

use std::path::Path;
use std::process::{Command, Output};

use flowlab::data::Toy2d;
use flowlab::metrics::w2_exact;
use flowlab::rng::{Stream, stream_rng};

use crate::common::temp_dir;

fn flowlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowlab"))
        .args(args)
        .output()
        .expect("run flowlab")
}

fn ok(args: &[&str]) -> String {
    let out = flowlab(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flowlab {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = flowlab(args);
    assert!(!out.status.success(), "flowlab {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A JSON config for a tiny MNIST UNet (fast enough for CLI tests), written into `dir`.
fn tiny_unet_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("unet.json");
    std::fs::write(
        &config,
        r#"{"dataset": {"kind": "mnist"}, "model": {"kind": "unet", "channels": [8, 16],
            "groups": 4, "embed_dim": 16, "attention": false}, "held_out_size": 16}"#,
    )
    .expect("config");
    config
}

fn read_csv(path: &Path) -> Vec<f32> {
    let text = std::fs::read_to_string(path).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x,y"));
    lines
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().expect("number"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The bar of the engine issue: the default moons model, trained for 4000 steps,
/// sampled with midpoint/20 steps, is within 2x of the data-vs-data W2 floor.
#[test]
fn default_moons_training_reaches_the_noise_floor() {
    let dir = temp_dir("cli-moons");
    let ck = dir.join("m.safetensors");
    let csv = dir.join("s.csv");
    let ck_s = ck.to_str().expect("utf8");
    let csv_s = csv.to_str().expect("utf8");
    let out = ok(&[
        "train",
        "--dataset",
        "moons",
        "--steps",
        "4000",
        "--seed",
        "1",
        "--out",
        ck_s,
    ]);
    assert!(out.contains("held-out W2"), "{out}");
    let out = ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--solver",
        "midpoint",
        "--steps",
        "20",
        "-n",
        "2000",
        "--seed",
        "2",
        "--out",
        csv_s,
    ]);
    assert!(out.contains("NFE 40"), "{out}");
    let samples = read_csv(&csv);
    assert_eq!(samples.len(), 4000);
    let moons = Toy2d::Moons { noise: 0.05 };
    let fresh = moons.draw_n(2000, &mut stream_rng(1234, Stream::Eval, 0));
    let fresh2 = moons.draw_n(2000, &mut stream_rng(1234, Stream::Eval, 1));
    let w2 = w2_exact(&samples, &fresh, 2).expect("w2");
    let floor = w2_exact(&fresh, &fresh2, 2).expect("w2");
    assert!(w2 < 2.0 * floor, "W2 {w2:.4} vs floor {floor:.4}");
    // Samples are in scikit-learn's coordinates, not standardised ones.
    let mean_x = samples.iter().step_by(2).sum::<f32>() / 2000.0;
    assert!((mean_x - 0.5).abs() < 0.1, "mean x {mean_x}");

    // PNG output, and other solvers report their NFE.
    let png = dir.join("s.png");
    let out = ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--solver",
        "rk4",
        "--steps",
        "5",
        "-n",
        "300",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    assert!(out.contains("NFE 20"), "{out}");
    let img = image::open(&png).expect("png");
    assert_eq!((img.width(), img.height()), (600, 600));
    let traj = dir.join("traj.csv");
    let out = ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--solver",
        "dopri5",
        "-n",
        "100",
        "--out",
        csv_s,
        "--trajectory",
        traj.to_str().expect("utf8"),
    ]);
    assert!(out.contains("dopri5"), "{out}");
    // Trajectories start at t = 0 (noise) and end at t = 1 with exactly the samples.
    let text = std::fs::read_to_string(&traj).expect("trajectory");
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().expect("num")).collect())
        .collect();
    assert_eq!(rows.first().map(|r| r[0]), Some(0.0));
    assert_eq!(rows.last().map(|r| r[0]), Some(1.0));
    let last: Vec<f32> = rows
        .iter()
        .filter(|r| r[0] == 1.0)
        .flat_map(|r| [r[2] as f32, r[3] as f32])
        .collect();
    assert_eq!(last, read_csv(&csv));
    // The image-only format is refused for 2D.
    let err = fails(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--out",
        dir.join("x.idx").to_str().expect("utf8"),
    ]);
    assert!(err.contains("IDX output is for image datasets"), "{err}");
}

#[test]
fn eval_prints_a_table_for_every_solver() {
    let dir = temp_dir("cli-eval");
    let ck = dir.join("e.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    ok(&[
        "train",
        "--dataset",
        "8gaussians",
        "--steps",
        "50",
        "--width",
        "32",
        "--batch",
        "64",
        "--out",
        ck_s,
    ]);
    let out = ok(&["eval", "--checkpoint", ck_s, "-n", "200", "--steps", "2,8"]);
    for name in [
        "euler",
        "midpoint",
        "heun",
        "rk4",
        "dopri5",
        "W2",
        "sliced-W2",
        "floor",
    ] {
        assert!(out.contains(name), "missing {name} in:\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with("rk4")).count(), 2);
}

#[test]
fn mnist_trains_and_samples_to_idx_and_png() {
    let dir = temp_dir("cli-mnist");
    let ck = dir.join("mnist.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    ok(&[
        "train",
        "--dataset",
        "mnist",
        "--steps",
        "3",
        "--batch",
        "8",
        "--width",
        "32",
        "--depth",
        "1",
        "--out",
        ck_s,
    ]);
    let idx = dir.join("d.idx");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--steps",
        "2",
        "-n",
        "5",
        "--out",
        idx.to_str().expect("utf8"),
    ]);
    let parsed = flowlab::data::idx::read_idx(&idx).expect("IDX readable");
    assert_eq!(parsed.dims, vec![5, 28, 28]);
    let png = dir.join("g.png");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--steps",
        "2",
        "-n",
        "4",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    assert!(image::open(&png).is_ok());
    let err = fails(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--out",
        dir.join("x.csv").to_str().expect("utf8"),
    ]);
    assert!(err.contains("CSV output is for 2D"), "{err}");
}

#[test]
fn resume_extends_a_run_and_bad_inputs_fail_with_one_message() {
    let dir = temp_dir("cli-errors");
    let ck = dir.join("r.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    ok(&[
        "train", "--steps", "20", "--width", "16", "--batch", "32", "--out", ck_s,
    ]);
    ok(&["train", "--resume", ck_s, "--steps", "30", "--out", ck_s]);
    let meta = flowlab::checkpoint::Checkpoint::load(&ck, &candle_core::Device::Cpu)
        .expect("load")
        .meta;
    assert_eq!(meta.step, 30);
    let err = fails(&["train", "--resume", ck_s, "--steps", "10", "--out", ck_s]);
    assert!(err.contains("below the 30 steps"), "{err}");
    let err = fails(&["train", "--dataset", "nope", "--out", ck_s]);
    assert!(
        err.contains("unknown dataset \"nope\"") && err.contains("moons"),
        "{err}"
    );
    let err = fails(&["train", "--batch", "0", "--out", ck_s]);
    assert!(err.contains("batch size"), "{err}");
    let err = fails(&[
        "sample",
        "--checkpoint",
        "/nonexistent/x.safetensors",
        "--out",
        "x.csv",
    ]);
    assert!(
        err.starts_with("error:") && err.contains("/nonexistent/x.safetensors"),
        "{err}"
    );
    let err = fails(&[
        "train",
        "--mnist-dir",
        "/nonexistent",
        "--dataset",
        "mnist",
        "--out",
        ck_s,
    ]);
    assert!(
        err.contains("/nonexistent") && err.contains("missing"),
        "{err}"
    );
    // A GPU that is not there (this build or machine has none): one line, no backtrace.
    if !candle_core::utils::cuda_is_available() {
        let err = fails(&["train", "--device", "cuda", "--steps", "1", "--out", ck_s]);
        assert!(err.contains("CUDA device unavailable"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// The pretrained moons model shipped in `weights/` loads and meets the quality bar.
#[test]
fn shipped_moons_weights_sample_at_the_noise_floor() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/moons.safetensors");
    let loaded = flowlab::checkpoint::LoadedModel::load(&path, &candle_core::Device::Cpu)
        .expect("shipped weights load");
    let solver = flowlab::solver::SolverConfig::fixed(flowlab::solver::SolverKind::Midpoint, 20);
    let s = flowlab::sample::sample(
        loaded.model.as_ref(),
        &loaded.meta.config.source,
        &loaded.meta.sample_shape,
        1000,
        5,
        &solver,
        false,
        &candle_core::Device::Cpu,
    )
    .expect("sample");
    let mut pts = s.data;
    loaded.meta.to_data_space(&mut pts);
    let moons = Toy2d::Moons { noise: 0.05 };
    let fresh = moons.draw_n(1000, &mut stream_rng(77, Stream::Eval, 0));
    let fresh2 = moons.draw_n(1000, &mut stream_rng(77, Stream::Eval, 1));
    let (w2, floor) = (
        w2_exact(&pts, &fresh, 2).expect("w2"),
        w2_exact(&fresh, &fresh2, 2).expect("w2"),
    );
    assert!(w2 < 2.0 * floor, "W2 {w2:.4} vs floor {floor:.4}");
    // The same model sampled as if trained with the cosine scheduler reaches the data too.
    let changed = flowlab::flow::SchedulerChange::new(
        loaded.model.as_ref(),
        loaded.meta.config.scheduler,
        flowlab::flow::Scheduler::Cosine,
    );
    let s = flowlab::sample::sample(
        &changed,
        &loaded.meta.config.source,
        &loaded.meta.sample_shape,
        1000,
        5,
        &flowlab::solver::SolverConfig::fixed(flowlab::solver::SolverKind::Midpoint, 50),
        false,
        &candle_core::Device::Cpu,
    )
    .expect("sample");
    let mut pts = s.data;
    loaded.meta.to_data_space(&mut pts);
    let w2c = w2_exact(&pts, &fresh, 2).expect("w2");
    assert!(
        w2c < 2.0 * floor,
        "cosine-retimed W2 {w2c:.4} vs floor {floor:.4}"
    );
}

/// Ctrl-C (SIGINT) stops training between two steps and saves a resumable checkpoint.
#[test]
fn ctrl_c_saves_a_resumable_checkpoint() {
    let dir = temp_dir("cli-sigint");
    let ck = dir.join("i.safetensors");
    let child = Command::new(env!("CARGO_BIN_EXE_flowlab"))
        .args([
            "train",
            "--steps",
            "10000000",
            "--width",
            "16",
            "--batch",
            "32",
            "--out",
            ck.to_str().expect("utf8"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted run exits non-zero");
    assert!(stderr.contains("saved the last good state"), "{stderr}");
    let meta = flowlab::checkpoint::Checkpoint::load(&ck, &candle_core::Device::Cpu)
        .expect("load")
        .meta;
    assert!(
        meta.step > 0 && meta.step < 10_000_000,
        "step {}",
        meta.step
    );
}

#[test]
fn class_conditional_unet_trains_and_samples_digits_by_class() {
    let dir = temp_dir("cli-cond");
    // A small conditional UNet from a config file, then --classes from the flag.
    let config = tiny_unet_config(&dir);
    let ck = dir.join("c.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    let out = ok(&[
        "train",
        "--config",
        config.to_str().expect("utf8"),
        "--classes",
        "10",
        "--steps",
        "2",
        "--batch",
        "8",
        "--out",
        ck_s,
    ]);
    assert!(out.contains("held-out loss"), "{out}");
    // One class: n images of it; IDX with n x 28 x 28.
    let idx = dir.join("three.idx");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--class",
        "3",
        "--guidance",
        "2",
        "--steps",
        "2",
        "-n",
        "6",
        "--out",
        idx.to_str().expect("utf8"),
    ]);
    let parsed = flowlab::data::idx::read_idx(&idx).expect("IDX readable");
    assert_eq!(parsed.dims, vec![6, 28, 28]);
    // Every class: one grid row per class, 2 per row -> 2 x 28 wide (plus borders).
    let png = dir.join("all.png");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--steps",
        "2",
        "-n",
        "20",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    let grid = image::open(&png).expect("png");
    assert!(
        grid.height() > 4 * grid.width(),
        "10 rows of 2: {}x{}",
        grid.width(),
        grid.height()
    );
    let err = fails(&[
        "sample",
        "--checkpoint",
        ck_s,
        "--class",
        "10",
        "--out",
        dir.join("x.png").to_str().expect("utf8"),
    ]);
    assert!(err.contains("--class must be in 0..10"), "{err}");
    // A weights-only copy is a quarter of the size and samples the same.
    let slim = dir.join("slim.safetensors");
    let out = ok(&[
        "export-weights",
        "--checkpoint",
        ck_s,
        "--out",
        slim.to_str().expect("utf8"),
    ]);
    assert!(out.contains("step 2"), "{out}");
    let size = |p: &std::path::Path| std::fs::metadata(p).expect("size").len();
    assert!(
        4 * size(&slim) < size(&ck) + 4096,
        "{} vs {}",
        size(&slim),
        size(&ck)
    );
    let idx_slim = dir.join("three-slim.idx");
    ok(&[
        "sample",
        "--checkpoint",
        slim.to_str().expect("utf8"),
        "--class",
        "3",
        "--guidance",
        "2",
        "--steps",
        "2",
        "-n",
        "6",
        "--out",
        idx_slim.to_str().expect("utf8"),
    ]);
    assert_eq!(
        std::fs::read(&idx).expect("idx"),
        std::fs::read(&idx_slim).expect("idx"),
        "the same digits from the weights-only file"
    );
    // The classifier judges the guided samples.
    let out = ok(&[
        "eval",
        "--checkpoint",
        ck_s,
        "-n",
        "20",
        "--steps",
        "2",
        "--classifier-only",
    ]);
    assert!(out.contains("recognised as the requested digit"), "{out}");
    assert!(
        out.contains("Frechet distance (not Inception FID)"),
        "{out}"
    );
}

#[test]
fn train_with_a_2d_source_and_ot_coupling_and_eval_reports_straightness() {
    let dir = temp_dir("cli-ot");
    let ck = dir.join("ot.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    ok(&[
        "train",
        "--dataset",
        "moons",
        "--source",
        "8gaussians",
        "--coupling",
        "exact-ot",
        "--steps",
        "30",
        "--batch",
        "64",
        "--out",
        ck_s,
    ]);
    let out = ok(&["eval", "--checkpoint", ck_s, "-n", "200", "--steps", "1,2"]);
    assert!(
        out.contains("source 8gaussians, coupling exact-ot: straightness"),
        "{out}"
    );
    assert!(out.contains("euler"), "{out}");
    let err = fails(&[
        "train",
        "--dataset",
        "moons",
        "--coupling",
        "hungarian",
        "--out",
        ck_s,
    ]);
    assert!(err.contains("unknown coupling"), "{err}");
}

#[test]
fn likelihood_reports_nll_for_2d_and_bits_per_dim_for_images() {
    let moons = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/moons.safetensors");
    let out = ok(&[
        "likelihood",
        "--checkpoint",
        moons.to_str().expect("utf8"),
        "-n",
        "300",
    ]);
    // The shipped moons flow: NLL in data space, finite and plausible
    // (moons with noise 0.05 has a differential entropy well under 1 nat).
    let nll: f64 = out
        .split("NLL ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no NLL in {out}"));
    assert!((-1.0..1.0).contains(&nll), "{out}");
    let dir = temp_dir("cli-nll");
    let config = tiny_unet_config(&dir);
    let ck = dir.join("d.safetensors");
    ok(&[
        "train",
        "--config",
        config.to_str().expect("utf8"),
        "--dequantize",
        "--steps",
        "2",
        "--batch",
        "8",
        "--out",
        ck.to_str().expect("utf8"),
    ]);
    let out = ok(&[
        "likelihood",
        "--checkpoint",
        ck.to_str().expect("utf8"),
        "-n",
        "4",
        "--steps",
        "2",
    ]);
    assert!(
        out.contains("bits/dim") && out.contains("Hutchinson, 1 probe"),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");
    // A sampled (not closed-form) source has no density to start from.
    let ot = dir.join("src.safetensors");
    ok(&[
        "train",
        "--dataset",
        "moons",
        "--source",
        "8gaussians",
        "--steps",
        "2",
        "--batch",
        "16",
        "--out",
        ot.to_str().expect("utf8"),
    ]);
    let err = fails(&[
        "likelihood",
        "--checkpoint",
        ot.to_str().expect("utf8"),
        "-n",
        "4",
    ]);
    assert!(err.contains("gaussian source"), "{err}");
}

#[test]
fn manifold_datasets_train_sample_and_eval_on_the_command_line() {
    let dir = temp_dir("cli-manifold");
    let ck = dir.join("torus.safetensors");
    let ck_s = ck.to_str().expect("path");
    let out = ok(&[
        "train",
        "--dataset",
        "torus-checkerboard",
        "--steps",
        "300",
        "--batch",
        "256",
        "--seed",
        "3",
        "--out",
        ck_s,
    ]);
    assert!(out.contains("% on the dark squares"), "{out}");
    assert!(out.contains("largest distance off it"), "{out}");
    // CSV of angles in [-pi, pi).
    let csv = dir.join("torus.csv");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "-n",
        "50",
        "--out",
        csv.to_str().expect("path"),
    ]);
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("phi,psi"));
    let values: Vec<f32> = lines
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().expect("number"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(values.len(), 100);
    assert!(values.iter().all(|v| v.abs() <= std::f32::consts::PI));
    // A PNG of the chart, and eval's table with the support share per solver.
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "-n",
        "200",
        "--out",
        dir.join("torus.png").to_str().expect("path"),
    ]);
    assert!(image::open(dir.join("torus.png")).is_ok());
    let eval = ok(&["eval", "--checkpoint", ck_s, "-n", "200", "--steps", "4"]);
    assert!(eval.contains("largest distance off the torus"), "{eval}");
    assert_eq!(eval.matches("on the dark squares").count(), 5, "{eval}");
    // The sphere: unit vectors x,y,z.
    let sphere = dir.join("sphere.safetensors");
    ok(&[
        "train",
        "--dataset",
        "sphere-vmf",
        "--steps",
        "50",
        "--batch",
        "128",
        "--out",
        sphere.to_str().expect("path"),
    ]);
    let csv = dir.join("sphere.csv");
    ok(&[
        "sample",
        "--checkpoint",
        sphere.to_str().expect("path"),
        "-n",
        "20",
        "--solver",
        "rk4",
        "--steps",
        "5",
        "--out",
        csv.to_str().expect("path"),
    ]);
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x,y,z"));
    for l in lines {
        let v: Vec<f32> = l.split(',').map(|v| v.parse().expect("number")).collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{l}");
    }
    // Flags that do not apply to a manifold are refused with a message.
    let err = fails(&[
        "train",
        "--dataset",
        "sphere-vmf",
        "--scheduler",
        "cosine",
        "--out",
        dir.join("x.safetensors").to_str().expect("path"),
    ]);
    assert!(err.contains("geodesic"), "{err}");
    let err = fails(&[
        "train",
        "--dataset",
        "moons",
        "--source",
        "uniform-torus",
        "--out",
        dir.join("y.safetensors").to_str().expect("path"),
    ]);
    assert!(err.contains("only for data on the torus"), "{err}");
}

#[test]
fn discrete_flows_train_sample_and_eval_on_the_command_line() {
    let dir = temp_dir("cli-discrete");
    let ck = dir.join("dm.safetensors");
    let ck_s = ck.to_str().expect("path");
    let out = ok(&[
        "train",
        "--dataset",
        "moons",
        "--flow",
        "discrete",
        "--discrete-source",
        "uniform",
        "--levels",
        "64",
        "--steps",
        "200",
        "--batch",
        "128",
        "--out",
        ck_s,
    ]);
    assert!(out.contains("held-out W2"), "{out}");
    // Samples sit on bin centres: 64 bins over [-3, 3] in standardised units.
    let csv = dir.join("dm.csv");
    ok(&[
        "sample",
        "--checkpoint",
        ck_s,
        "-n",
        "300",
        "--steps",
        "10",
        "--corrector",
        "1",
        "--out",
        csv.to_str().expect("path"),
    ]);
    let pts = read_csv(&csv);
    assert_eq!(pts.len(), 600);
    let std = flowlab::data::Standardizer::fit(&Toy2d::Moons { noise: 0.05 });
    let mut model = pts.clone();
    std.to_model(&mut model);
    let width = 6.0 / 64.0;
    for v in model {
        let k = (v + 3.0) / width - 0.5;
        assert!((k - k.round()).abs() < 1e-3, "{v} is not a bin centre");
    }
    let eval = ok(&["eval", "--checkpoint", ck_s, "-n", "200", "--steps", "5,20"]);
    assert!(
        eval.contains("discrete flow: uniform source, 64 levels"),
        "{eval}"
    );
    assert_eq!(eval.matches("\neuler").count(), 2, "{eval}");
    // Discrete MNIST with a tiny token UNet: IDX digits of 4 grey levels.
    let config = tiny_unet_config(&dir);
    let img = dir.join("dmnist.safetensors");
    ok(&[
        "train",
        "--config",
        config.to_str().expect("path"),
        "--flow",
        "discrete",
        "--steps",
        "3",
        "--batch",
        "8",
        "--out",
        img.to_str().expect("path"),
    ]);
    let idx = dir.join("d.idx");
    ok(&[
        "sample",
        "--checkpoint",
        img.to_str().expect("path"),
        "-n",
        "4",
        "--steps",
        "4",
        "--out",
        idx.to_str().expect("path"),
    ]);
    let bytes = std::fs::read(&idx).expect("idx");
    let pixels = bytes.get(16..).expect("pixels");
    assert_eq!(pixels.len(), 4 * 784);
    assert!(
        pixels.iter().all(|p| [0u8, 85, 170, 255].contains(p)),
        "only the 4 grey levels"
    );
    // Discrete settings without --flow discrete are refused.
    let err = fails(&[
        "train",
        "--levels",
        "8",
        "--out",
        dir.join("x.safetensors").to_str().expect("path"),
    ]);
    assert!(err.contains("--flow discrete"), "{err}");
}

#[test]
fn a_full_disk_and_a_bad_config_file_fail_with_one_message_and_lose_nothing() {
    let dir = temp_dir("cli-full-disk");
    let ck = dir.join("keep.safetensors");
    let ck_s = ck.to_str().expect("utf8");
    ok(&[
        "train", "--steps", "5", "--width", "16", "--batch", "32", "--out", ck_s,
    ]);
    let before = std::fs::read(&ck).expect("saved");
    // A full disk, simulated with a 64 KiB file-size limit (SIGXFSZ ignored, so
    // the write fails with an error instead of killing the process).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 64; trap '' XFSZ; exec '{}' train --steps 5 --width 256 --batch 32 --out '{}'",
            env!("CARGO_BIN_EXE_flowlab"),
            ck_s
        ))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed save is an error");
    assert!(err.contains("keep.safetensors"), "names the file: {err}");
    assert_eq!(
        std::fs::read(&ck).expect("still there"),
        before,
        "the old checkpoint is untouched"
    );
    let stray: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "keep.safetensors")
        .collect();
    assert!(stray.is_empty(), "no partial files left: {stray:?}");
    // A config file that is not valid JSON, and one with a value out of range.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"batch_size\": 12,").expect("write");
    let err = fails(&[
        "train",
        "--config",
        bad.to_str().expect("utf8"),
        "--out",
        ck_s,
    ]);
    assert!(err.contains("bad.json") && err.contains("JSON"), "{err}");
    std::fs::write(&bad, "{\"optimizer\": {\"lr\": -0.5}}").expect("write");
    let err = fails(&[
        "train",
        "--config",
        bad.to_str().expect("utf8"),
        "--out",
        ck_s,
    ]);
    assert!(err.contains("learning rate"), "{err}");
}
