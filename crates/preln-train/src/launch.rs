//! How a process takes part in a run: alone, or as one rank of a data-parallel group; which of
//! them holds the run folder, and which GPU each trains on.

use std::path::Path;

use tch::Device;

use crate::rundir::{prepare_run_dir, RunLock};
use crate::TrainError;

/// How this process takes part in a run: a new or a resumed run, alone or as rank `rank` of a
/// data-parallel group. Rank 0 holds the run folder (its lock, checkpoints, metrics); the other
/// ranks read and write nothing there and receive rank 0's model and position when they join
/// ([`crate::Trainer::with_group`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Launch {
    pub resume: bool,
    pub rank: usize,
    /// The rank's index on its machine (`LOCAL_RANK`): which GPU it trains on.
    pub local_rank: usize,
}

impl From<bool> for Launch {
    /// A process training alone; `resume`: from the run's last checkpoint.
    fn from(resume: bool) -> Self {
        Launch { resume, ..Default::default() }
    }
}

impl Launch {
    /// The device of this rank: `cuda:LOCAL_RANK` (modulo the GPUs there are) where the run
    /// trains on CUDA.
    pub fn device(&self, resolved: Device) -> Device {
        match resolved {
            Device::Cuda(_) => Device::Cuda(self.local_rank % tch::Cuda::device_count().max(1) as usize),
            d => d,
        }
    }

    /// Rank 0 locks and checks the run folder ([`prepare_run_dir`]); the others leave it alone.
    pub fn prepare_run_dir(&self, run_dir: &Path) -> Result<Option<RunLock>, TrainError> {
        match self.rank {
            0 => Ok(Some(prepare_run_dir(run_dir, self.resume)?)),
            _ => Ok(None),
        }
    }
}
