//! Choosing where training runs.
//!
//! CPU (`ndarray`) is always available and bit-exact. CUDA needs the `cuda` feature at build
//! time and an NVIDIA driver at run time; burn panics deep inside when the driver library
//! cannot be loaded, so [`cuda_available`] probes for it first and [`BackendChoice::check`]
//! turns its absence into an error that says what is missing.

use std::ops::Range;
use std::path::Path;

use crate::data::Dataset;
use crate::distill::ShardLabels;
use crate::error::TrainError;
use crate::loss::{LossJob, LossResult};
use crate::model::WeightsFile;
use crate::ops::TrainBackend;
use crate::rounds::{SegmentJob, SegmentResult};
use crate::train::{Limits, NasJob, NasResult, Progress};

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// burn's ndarray backend (bit-exact, the default).
    #[default]
    Cpu,
    /// burn's CUDA backend (needs the `cuda` feature and an NVIDIA driver).
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(TrainError::Backend(format!(
                "unknown backend {other:?} (choose cpu or cuda)"
            ))),
        }
    }
}

/// Folders where the NVIDIA driver's `libcuda.so.1` is usually installed.
const DRIVER_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/lib/wsl/lib",
    "/usr/local/cuda/lib64/stubs",
];

/// Whether the CUDA driver library can be found (in `LD_LIBRARY_PATH` or the usual folders)
/// and a GPU device node exists. This is what burn needs before its first CUDA call.
pub fn cuda_available() -> Result<(), String> {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    dirs.extend(DRIVER_DIRS.iter().map(|d| d.to_string()));
    let lib = dirs
        .iter()
        .map(|d| Path::new(d).join("libcuda.so.1"))
        .find(|p| p.exists());
    if lib.is_none() {
        return Err(format!(
            "the NVIDIA driver library libcuda.so.1 was not found (looked in LD_LIBRARY_PATH and {}); install the driver or use the CPU backend",
            DRIVER_DIRS.join(", ")
        ));
    }
    if !Path::new("/dev/nvidiactl").exists() && !Path::new("/dev/dxg").exists() {
        return Err(
            "no NVIDIA device node (/dev/nvidiactl): is a GPU attached and the driver loaded?"
                .into(),
        );
    }
    Ok(())
}

impl BackendChoice {
    /// Checks that this backend can run here: CUDA needs the feature and a driver.
    pub fn check(self) -> Result<(), TrainError> {
        match self {
            BackendChoice::Cpu => Ok(()),
            BackendChoice::Cuda if !cfg!(feature = "cuda") => Err(TrainError::Backend(
                "this build has no CUDA support: rebuild with `--features cuda`".into(),
            )),
            BackendChoice::Cuda => cuda_available().map_err(TrainError::Backend),
        }
    }
}

/// burn's CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;

/// The three job kinds on one backend, behind a trait object.
///
/// The entry points are generic over the backend, and generic code is compiled where it is
/// instantiated: a caller built without optimisation (a debug node binary, its tests) would
/// train 100x slower. Instantiating them here, in this crate (which is optimised even in dev
/// builds, see the workspace `Cargo.toml`), keeps every caller fast and lets it choose the
/// backend at run time.
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// [`crate::train::run_nas`].
    fn nas(
        &self,
        job: &NasJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<NasResult, TrainError>;
    /// [`crate::loss::run_loss`].
    fn loss(
        &self,
        job: &LossJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<LossResult, TrainError>;
    /// [`crate::distill::label_shard`].
    fn label(
        &self,
        teacher: &WeightsFile,
        data: &Dataset,
        range: Range<u64>,
        k: u8,
    ) -> Result<ShardLabels, TrainError>;
    /// [`crate::rounds::run_segment`].
    fn segment(
        &self,
        job: &SegmentJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SegmentResult, TrainError>;
    /// [`crate::rounds::evaluate_weights`].
    fn evaluate(
        &self,
        weights: &WeightsFile,
        data: &Dataset,
        idx: &[u32],
    ) -> Result<(u64, u64), TrainError>;
}

/// Runs jobs on backend `B` (training) and its inner backend (inference), on one device.
#[derive(Debug, Clone)]
pub struct On<B: TrainBackend>(B::Device);

impl<B: TrainBackend> On<B> {
    /// Runs on `device`.
    pub fn new(device: B::Device) -> Self {
        On(device)
    }
}

impl<B: TrainBackend> Default for On<B> {
    /// Runs on the backend's default device.
    fn default() -> Self {
        On(Default::default())
    }
}

impl<B: TrainBackend> Runner for On<B> {
    fn nas(
        &self,
        job: &NasJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<NasResult, TrainError> {
        crate::train::run_nas::<B>(job, limits, &self.0, progress)
    }
    fn loss(
        &self,
        job: &LossJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<LossResult, TrainError> {
        crate::loss::run_loss::<B>(job, limits, &self.0, progress)
    }
    fn label(
        &self,
        teacher: &WeightsFile,
        data: &Dataset,
        range: Range<u64>,
        k: u8,
    ) -> Result<ShardLabels, TrainError> {
        crate::distill::label_shard::<B::InnerBackend>(teacher, data, range, k, &self.0)
    }
    fn segment(
        &self,
        job: &SegmentJob<'_>,
        limits: &Limits,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SegmentResult, TrainError> {
        crate::rounds::run_segment::<B>(job, limits, &self.0, progress)
    }
    fn evaluate(
        &self,
        weights: &WeightsFile,
        data: &Dataset,
        idx: &[u32],
    ) -> Result<(u64, u64), TrainError> {
        crate::rounds::evaluate_weights::<B::InnerBackend>(weights, data, idx, &self.0)
    }
}

impl BackendChoice {
    /// A runner for this backend on its first device, after [`BackendChoice::check`].
    pub fn runner(self) -> Result<Box<dyn Runner>, TrainError> {
        match self {
            BackendChoice::Cpu => Device::Cpu.runner(),
            BackendChoice::Cuda => Device::Cuda(0).runner(),
        }
    }
}

/// A device a node trains on, one job at a time (`hivemesh run --devices cpu,cuda:0`): each is
/// one job slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU (burn's ndarray backend).
    Cpu,
    /// The CUDA GPU of this index (`cuda:0` is the first).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = TrainError;
    /// `cpu`, `cuda` (the first GPU) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, TrainError> {
        let bad = || {
            TrainError::Backend(format!(
                "unknown device {s:?}: write cpu, cuda or cuda:N (N from 0), comma-separated"
            ))
        };
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The backend class it runs.
    pub fn backend(self) -> BackendChoice {
        match self {
            Device::Cpu => BackendChoice::Cpu,
            Device::Cuda(_) => BackendChoice::Cuda,
        }
    }

    /// Whether the device is there: the CPU always; a GPU needs the `cuda` feature, the
    /// driver and an index below the GPUs this host shows ([`cuda_device_count`]).
    pub fn check(self) -> Result<(), TrainError> {
        self.backend().check()?;
        if let Device::Cuda(i) = self {
            let n = cuda_device_count();
            if i >= n {
                return Err(TrainError::Backend(format!(
                    "cuda:{i} is not there: this host shows {n} GPU{} ({}); list the GPUs \
                     to use as cuda:0 .. cuda:{}",
                    if n == 1 { "" } else { "s" },
                    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_some() {
                        "counted from CUDA_VISIBLE_DEVICES"
                    } else {
                        "counted from /dev/nvidiaN"
                    },
                    n.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    /// A runner on this device, after [`Device::check`].
    pub fn runner(self) -> Result<Box<dyn Runner>, TrainError> {
        self.check()?;
        match self {
            Device::Cpu => Ok(Box::new(On::<crate::CpuAutodiff>::default())),
            Device::Cuda(i) => cuda_runner(i),
        }
    }
}

/// How many GPUs CUDA will show this process: the entries of `CUDA_VISIBLE_DEVICES` when it
/// is set, else the `/dev/nvidiaN` device nodes.
pub fn cuda_device_count() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter(|d| !d.trim().is_empty()).count();
    }
    std::fs::read_dir("/dev").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix("nvidia")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    })
}

#[cfg(feature = "cuda")]
fn cuda_runner(index: usize) -> Result<Box<dyn Runner>, TrainError> {
    Ok(Box::new(On::<CudaAutodiff>::new(
        burn::backend::cuda::CudaDevice::new(index),
    )))
}

#[cfg(not(feature = "cuda"))]
fn cuda_runner(_index: usize) -> Result<Box<dyn Runner>, TrainError> {
    BackendChoice::Cuda.check()?;
    Err(TrainError::Backend("this build has no CUDA support".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_names_parse() {
        assert!(BackendChoice::Cpu.check().is_ok());
        assert_eq!(
            "cuda".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Cuda)
        );
        assert!("tpu".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn devices_parse_and_a_missing_gpu_is_a_clear_error() {
        assert_eq!("cpu".parse::<Device>().ok(), Some(Device::Cpu));
        assert_eq!("cuda".parse::<Device>().ok(), Some(Device::Cuda(0)));
        assert_eq!(" cuda:3".parse::<Device>().ok(), Some(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<Device>().expect_err(bad).to_string();
            assert!(e.contains("cuda:N"), "{e}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert!(Device::Cpu.check().is_ok());
        // No host shows this many GPUs: the error says what is there (or what is missing).
        let e = Device::Cuda(4096)
            .check()
            .expect_err("not there")
            .to_string();
        assert!(
            e.contains("is not there") || e.contains("features cuda") || e.contains("libcuda"),
            "{e}"
        );
    }

    #[test]
    fn cuda_without_feature_or_driver_is_a_clear_error() {
        // On hosts without a driver (CI), the error names what is missing; with one and the
        // feature, it passes.
        match BackendChoice::Cuda.check() {
            Ok(()) => assert!(cfg!(feature = "cuda") && cuda_available().is_ok()),
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains("features cuda")
                        || m.contains("libcuda")
                        || m.contains("device node"),
                    "{m}"
                );
            }
        }
    }
}
