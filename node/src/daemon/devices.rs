//! Where jobs train: job slots, either `--jobs N` shared by every campaign (each job on its
//! backend's first device) or one per device listed with `--devices cpu,cuda:0,cuda:1` (a job
//! runs on a free device of its campaign's backend class).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use hivemesh_protocol::BackendClass;
use hivemesh_trainer::backend::Device;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The node's job slots.
pub(super) enum Slots {
    /// `--jobs N`: `N` jobs at once, whatever their backend, each on its first device.
    Shared(Arc<Semaphore>),
    /// `--devices`: per backend class, its devices.
    Devices(HashMap<BackendClass, Arc<DeviceClass>>),
}

/// The devices of one backend class.
pub(super) struct DeviceClass {
    /// Those free now.
    free: Mutex<Vec<Device>>,
    /// One permit per free device.
    permits: Arc<Semaphore>,
}

/// A slot held by a running job: its device, given back when the job ends.
pub(super) struct Lease {
    /// The device the job runs on.
    pub(super) device: Device,
    /// The permit (dropped with the lease).
    _permit: OwnedSemaphorePermit,
    /// Where the device goes back (none for shared slots).
    class: Option<Arc<DeviceClass>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = &self.class {
            c.free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.device);
        }
    }
}

/// The first device of a backend class.
fn first_device(class: BackendClass) -> Device {
    match class {
        BackendClass::CpuNdarray => Device::Cpu,
        BackendClass::Cuda => Device::Cuda(0),
    }
}

/// The class a device runs.
pub(crate) fn class_of(device: Device) -> BackendClass {
    match device {
        Device::Cpu => BackendClass::CpuNdarray,
        Device::Cuda(_) => BackendClass::Cuda,
    }
}

impl Slots {
    /// `jobs` shared slots, or one per device of `devices` when given.
    pub(super) fn new(jobs: u16, devices: Option<&[Device]>) -> Slots {
        let Some(devices) = devices else {
            return Slots::Shared(Arc::new(Semaphore::new(usize::from(jobs.max(1)))));
        };
        let mut by_class: HashMap<BackendClass, Vec<Device>> = HashMap::new();
        for d in devices {
            by_class.entry(class_of(*d)).or_default().push(*d);
        }
        Slots::Devices(
            by_class
                .into_iter()
                .map(|(class, mut list)| {
                    // Taken from the back: the first listed device is used first.
                    list.reverse();
                    let permits = Arc::new(Semaphore::new(list.len()));
                    let free = Mutex::new(list);
                    (class, Arc::new(DeviceClass { free, permits }))
                })
                .collect(),
        )
    }

    /// Waits for a slot for a job of `class`; `None` if this node has no device of it (or is
    /// shutting down).
    pub(super) async fn acquire(&self, class: BackendClass) -> Option<Lease> {
        match self {
            Slots::Shared(sem) => Some(Lease {
                device: first_device(class),
                _permit: Arc::clone(sem).acquire_owned().await.ok()?,
                class: None,
            }),
            Slots::Devices(classes) => {
                let c = Arc::clone(classes.get(&class)?);
                let permit = Arc::clone(&c.permits).acquire_owned().await.ok()?;
                let device = c
                    .free
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop()?;
                Some(Lease {
                    device,
                    _permit: permit,
                    class: Some(c),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_device_runs_one_job_and_comes_back_when_it_ends() {
        let slots = Slots::new(1, Some(&[Device::Cuda(0), Device::Cuda(1), Device::Cpu]));
        let a = slots.acquire(BackendClass::Cuda).await.expect("a GPU");
        let b = slots
            .acquire(BackendClass::Cuda)
            .await
            .expect("another GPU");
        assert_eq!((a.device, b.device), (Device::Cuda(0), Device::Cuda(1)));
        let cpu = slots
            .acquire(BackendClass::CpuNdarray)
            .await
            .expect("the CPU");
        assert_eq!(cpu.device, Device::Cpu);
        // Both GPUs busy: a third job waits until one ends, then gets that one.
        let waiting = slots.acquire(BackendClass::Cuda);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(b);
        let c = waiting.await.expect("the freed GPU");
        assert_eq!(c.device, Device::Cuda(1));
        // Without a CUDA device listed, CUDA jobs have no slot at all.
        let cpu_only = Slots::new(1, Some(&[Device::Cpu]));
        assert!(cpu_only.acquire(BackendClass::Cuda).await.is_none());
        // Shared slots run each job on its backend's first device.
        let shared = Slots::new(2, None);
        let x = shared.acquire(BackendClass::Cuda).await.expect("a slot");
        assert_eq!(x.device, Device::Cuda(0));
        drop((a, cpu, c, x));
    }
}
