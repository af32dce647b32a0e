//! Data-parallel training over torch.distributed's engine (c10d, through `preln_ops::dist`):
//! which micro-batches of an update a rank computes, the gradient all-reduce in fp32 buckets,
//! rank 0's model and position broadcast at the start, and the checks that the ranks agree.
//!
//! An update of `world` ranks with `train.update_freq = F` is the update of one process with
//! `update_freq = world * F`: the same batches (rank r computes micro-batches `r*F .. r*F+F` of
//! the update's group, in the epoch's global order), the same data and dropout seeds (drawn from
//! the micro-batch's index in the group), the same denominator (the group's token count, summed
//! before backward). Gradients are summed, so the optimizer sees the token-weighted mean of every
//! rank's batches, and every rank takes the same step.

use std::cell::Cell;
use std::ops::Range;
use std::time::{Duration, Instant};

use preln_ops::dist::{Backend, ProcessGroup, Rendezvous};
use tch::{Device, Kind, Tensor};

use crate::TrainError;

/// Elements per all-reduce (fp32: 16 MiB), as DDP's buckets.
const BUCKET: i64 = 1 << 22;

/// How long a rank whose collective failed watches the others' heartbeats (the shim beats
/// every second).
const HEARTBEAT_WAIT: Duration = Duration::from_millis(2500);

/// This process's place in a data-parallel group, and the group.
pub struct DataParallel {
    group: ProcessGroup,
    /// Where the collectives' tensors live: the GPU with NCCL, else the CPU (Gloo; CUDA tensors
    /// are staged through host memory).
    device: Device,
    /// Time spent in collectives since [`DataParallel::take_comm_time`] was last called.
    comm: Cell<Duration>,
    /// Collectives this rank has entered (each announced in the store first).
    entered: Cell<u64>,
}

impl DataParallel {
    /// Joins the group `r` describes for a model on `device` (blocks until every rank has
    /// joined, or the timeout) over `backend`; `None`: NCCL for CUDA where this build has it,
    /// else Gloo.
    pub fn join(r: &Rendezvous, device: Device, backend: Option<Backend>) -> Result<DataParallel, TrainError> {
        let backend = match (backend, device) {
            (Some(Backend::Nccl), d) if !d.is_cuda() => {
                return Err(TrainError::Config("the NCCL backend needs a model on CUDA (train.device)".into()))
            }
            (Some(b), _) => b,
            (None, Device::Cuda(_)) if preln_ops::dist::nccl_available() => Backend::Nccl,
            (None, _) => Backend::Gloo,
        };
        let group = ProcessGroup::join_with(r, backend).map_err(|e| {
            TrainError::Dist(format!(
                "rank {} of {}: joining the {backend:?} group at {}:{} failed: {e}",
                r.rank, r.world, r.addr, r.port
            ))
        })?;
        let device = if backend == Backend::Nccl { device } else { Device::Cpu };
        Ok(DataParallel { group, device, comm: Default::default(), entered: Default::default() })
    }

    /// The backend carrying the collectives.
    pub fn backend(&self) -> Backend {
        self.group.backend()
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    /// Time spent in collectives since the last call.
    pub fn take_comm_time(&self) -> Duration {
        self.comm.take()
    }

    /// The micro-batches (indices into an update's group of `n`) this rank computes when every
    /// rank takes `per_rank` of them; the ranks' shares tile `0..n` in rank order (at an epoch's
    /// end, where `n < world * per_rank`, the last ranks get fewer or none).
    pub fn share(&self, n: usize, per_rank: usize) -> Range<usize> {
        share_of(self.rank(), n, per_rank)
    }

    /// Announces, through the rendezvous store, that this rank enters its next collective,
    /// `what`: a failed collective reads the others' notes to name the rank that fell behind.
    fn announce(&self, what: &str) -> Result<(), preln_ops::OpError> {
        self.entered.set(self.entered.get() + 1);
        self.group.store_set(&format!("entered/{}", self.rank()), &format!("{} {what}", self.entered.get()))
    }

    /// Why a collective failed, as far as the store tells: the ranks that did not reach it,
    /// else the ranks whose heartbeat stopped (frozen or dead; this takes [`HEARTBEAT_WAIT`]).
    fn laggards(&self) -> String {
        const GONE: &str = "the rendezvous store is unreachable: its host (rank 0, or the launcher) has stopped";
        let others: Vec<usize> = (0..self.world()).filter(|&r| r != self.rank()).collect();
        let read = |key: String| self.group.store_get(&key);
        let me = self.entered.get();
        let mut behind = Vec::new();
        for &r in &others {
            match read(format!("entered/{r}")) {
                Ok(Some(v)) => {
                    let (n, theirs) = v.split_once(' ').unwrap_or((&v, ""));
                    if n.parse::<u64>().is_ok_and(|n| n < me) {
                        behind.push(format!("rank {r} did not get there (its last collective: {theirs})"));
                    }
                }
                Ok(None) => behind.push(format!("rank {r} never reached a collective")),
                Err(_) => return GONE.into(),
            }
        }
        if !behind.is_empty() {
            return format!("{}: it stopped or hangs", behind.join("; "));
        }
        let beats = || -> Result<Vec<Option<String>>, preln_ops::OpError> {
            others.iter().map(|r| read(format!("alive/{r}"))).collect()
        };
        let Ok(before) = beats() else { return GONE.into() };
        std::thread::sleep(HEARTBEAT_WAIT);
        let Ok(after) = beats() else { return GONE.into() };
        let frozen: Vec<String> = others
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| b == a)
            .map(|(r, _)| r.to_string())
            .collect();
        match frozen.is_empty() {
            true => "every rank had entered it and is alive: the network between them failed".into(),
            false => format!(
                "every rank had entered it, and the heartbeat of rank(s) {} stopped: frozen or dead",
                frozen.join(", ")
            ),
        }
    }

    /// Runs collective `op` (announced, timed), with an error that says which rank failed at
    /// what, and which ranks had fallen behind.
    fn collective(&self, what: &str, op: impl FnOnce() -> Result<(), preln_ops::OpError>) -> Result<(), TrainError> {
        let t0 = Instant::now();
        let r = self.announce(what).and_then(|()| op());
        self.comm.set(self.comm.get() + t0.elapsed());
        r.map_err(|e| {
            TrainError::Dist(format!(
                "rank {} of {} failed in {what} (waited {:.1} s); {} ({e})",
                self.rank(),
                self.world(),
                t0.elapsed().as_secs_f64(),
                self.laggards()
            ))
        })
    }

    /// The sums of `values` over all ranks (f64, exact for counts).
    pub fn sum(&self, values: &[f64], what: &str) -> Result<Vec<f64>, TrainError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.collective(what, || self.group.all_reduce_sum(&t))?;
        Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?)
    }

    /// Whether any rank says `flag`.
    pub fn any(&self, flag: bool, what: &str) -> Result<bool, TrainError> {
        Ok(self.sum(&[f64::from(u8::from(flag))], what)?[0] > 0.0)
    }

    /// Sums every parameter's gradient over all ranks (fp32, in buckets), and `extra` (scalars
    /// that travel with the first bucket, e.g. the update's loss sums); returns `extra`'s sums.
    /// A gradient no rank has stays undefined (the optimizer skips it, as in one process); one
    /// that only other ranks have becomes their sum here.
    pub fn reduce_gradients(
        &self,
        params: &[(String, Tensor)],
        extra: &[f32],
        what: &str,
    ) -> Result<Vec<f32>, TrainError> {
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
        let head: Vec<f32> =
            grads.iter().map(|g| if g.defined() { 1.0 } else { 0.0 }).chain(extra.iter().copied()).collect();
        let mut head_sum = Vec::new();
        for (b, range) in buckets(params).into_iter().enumerate() {
            let mut parts: Vec<Tensor> = Vec::new();
            if b == 0 {
                parts.push(Tensor::from_slice(&head).to_device(self.device));
            }
            for i in range.clone() {
                let p = &params[i].1;
                let flat =
                    if grads[i].defined() { grads[i].detach().reshape([-1]) } else { p.zeros_like().reshape([-1]) };
                parts.push(flat.to_kind(Kind::Float).to_device(self.device));
            }
            let flat = Tensor::cat(&parts, 0);
            self.collective(what, || self.group.all_reduce_sum(&flat))?;
            let mut offset = 0;
            if b == 0 {
                head_sum = Vec::<f32>::try_from(flat.narrow(0, 0, head.len() as i64).to_device(Device::Cpu))?;
                offset = head.len() as i64;
            }
            for i in range {
                let p = &params[i].1;
                let n = p.numel() as i64;
                let summed = flat.narrow(0, offset, n).view(p.size().as_slice());
                offset += n;
                tch::no_grad(|| -> Result<(), TrainError> {
                    if grads[i].defined() {
                        grads[i].shallow_clone().copy_(&summed);
                    } else if head_sum[i] > 0.0 {
                        preln_ops::set_grad(p, &summed.to_device(p.device()).to_kind(p.kind()).contiguous())?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(head_sum[params.len()..].to_vec())
    }

    /// Every rank's `tensors` become rank 0's (in place, in buckets).
    pub fn broadcast_tensors(&self, tensors: &[Tensor], what: &str) -> Result<(), TrainError> {
        let sized: Vec<(String, Tensor)> = tensors.iter().map(|t| (String::new(), t.shallow_clone())).collect();
        for range in buckets(&sized) {
            let parts: Vec<Tensor> =
                tensors[range.clone()].iter().map(|t| t.detach().reshape([-1]).to_device(self.device)).collect();
            let flat = Tensor::cat(&parts, 0);
            self.collective(what, || self.group.broadcast(&flat, 0))?;
            let mut offset = 0;
            for t in &tensors[range] {
                let n = t.numel() as i64;
                tch::no_grad(|| t.shallow_clone().copy_(&flat.narrow(0, offset, n).view(t.size().as_slice())));
                offset += n;
            }
        }
        Ok(())
    }

    /// Rank `root`'s `bytes`, on every rank.
    pub fn broadcast_bytes(&self, bytes: &[u8], root: usize, what: &str) -> Result<Vec<u8>, TrainError> {
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(self.device);
        self.collective(what, || self.group.broadcast(&len, root))?;
        let len = i64::try_from(&len.to_device(Device::Cpu))? as usize;
        let mut mine = bytes.to_vec();
        mine.resize(len, 0);
        let t = Tensor::from_slice(&mine).to_device(self.device);
        self.collective(what, || self.group.broadcast(&t, root))?;
        Ok(Vec::<u8>::try_from(&t.to_device(Device::Cpu))?)
    }

    /// The rank that computes micro-batch `k` when every rank takes `per_rank`.
    pub fn owner(&self, k: usize, per_rank: usize) -> usize {
        k / per_rank.max(1)
    }

    /// Checks that every rank holds the same `value` as rank 0 (by SHA-256); the error names
    /// the ranks that differ, on every rank.
    pub fn check_same(&self, value: &[u8], what: &str) -> Result<(), TrainError> {
        let digest = preln_data::prepare::sha256_hex(value);
        let root = self.broadcast_bytes(digest.as_bytes(), 0, what)?;
        let mut differs = vec![0.0; self.world()];
        differs[self.rank()] = f64::from(u8::from(root != digest.as_bytes()));
        let ranks: Vec<String> = self
            .sum(&differs, what)?
            .iter()
            .enumerate()
            .filter(|(_, &d)| d > 0.0)
            .map(|(r, _)| r.to_string())
            .collect();
        if ranks.is_empty() {
            return Ok(());
        }
        Err(TrainError::Dist(format!(
            "{what}: rank(s) {} differ from rank 0 (seen by rank {} of {})",
            ranks.join(", "),
            self.rank(),
            self.world()
        )))
    }
}

/// [`DataParallel::share`] of rank `rank`.
fn share_of(rank: usize, n: usize, per_rank: usize) -> Range<usize> {
    let start = (rank * per_rank).min(n);
    start..(start + per_rank).min(n)
}

/// Consecutive runs of `tensors` of at most [`BUCKET`] elements (a larger tensor alone).
fn buckets(tensors: &[(String, Tensor)]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = t.numel() as i64;
        if size > 0 && size + n > BUCKET {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < tensors.len() || out.is_empty() {
        out.push(start..tensors.len());
    }
    out
}

/// SHA-256 over the bytes of `tensors`, in order (parameters compared across ranks).
pub fn tensors_digest(tensors: &[(String, Tensor)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (name, t) in tensors {
        bytes.extend_from_slice(name.as_bytes());
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; n];
        t.copy_data_u8(&mut buf, t.numel());
        bytes.extend_from_slice(preln_data::prepare::sha256_hex(&buf).as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(ns: &[i64]) -> Vec<(String, Tensor)> {
        ns.iter().map(|&n| (String::new(), Tensor::zeros([n], (Kind::Float, Device::Cpu)))).collect()
    }

    #[test]
    fn shares_tile_the_group_in_rank_order() {
        let shares = |n, f| (0..3).map(|r| share_of(r, n, f)).collect::<Vec<_>>();
        assert_eq!(shares(6, 2), vec![0..2, 2..4, 4..6]);
        assert_eq!(shares(3, 2), vec![0..2, 2..3, 3..3]);
        assert_eq!(shares(1, 1), vec![0..1, 1..1, 1..1]);
    }

    #[test]
    fn buckets_tile_the_tensors_and_stay_under_the_limit_unless_one_tensor_is_larger() {
        assert_eq!(buckets(&sized(&[3, 4])), vec![0..2]);
        assert_eq!(buckets(&sized(&[BUCKET - 1, 2, BUCKET + 5, 1])), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(buckets(&sized(&[])), vec![0..0]);
    }
}
