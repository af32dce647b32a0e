//! torch.distributed's engine (c10d) through the shim (`csrc/dist.cpp`, `csrc/nccl.cpp`): a
//! TCPStore rendezvous and a Gloo process group that Python ranks
//! (`torch.distributed.init_process_group("gloo")`) can join, with the variables `torchrun`
//! sets; or an NCCL group for CUDA tensors.

use std::ffi::{c_void, CStr, CString};
use std::os::raw::{c_char, c_int};
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::{check, ptr, OpError};

extern "C" {
    fn preln_dist_new(
        out: *mut *mut c_void,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        server: c_int,
        timeout_ms: i64,
        host: *const c_char,
    ) -> c_int;
    fn preln_dist_new_nccl(
        out: *mut *mut c_void,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        server: c_int,
        timeout_ms: i64,
    ) -> c_int;
    fn preln_dist_nccl_available() -> c_int;
    fn preln_dist_allreduce_sum(group: *mut c_void, t: *mut C_tensor) -> c_int;
    fn preln_dist_broadcast(group: *mut c_void, t: *mut C_tensor, root: c_int) -> c_int;
    fn preln_dist_store_set(group: *mut c_void, key: *const c_char, value: *const c_char) -> c_int;
    fn preln_dist_store_get(
        group: *mut c_void,
        key: *const c_char,
        buf: *mut c_char,
        len: c_int,
        found: *mut c_int,
    ) -> c_int;
    fn preln_dist_free(group: *mut c_void);
    fn preln_dist_available() -> c_int;
}

/// Whether this build has c10d's Gloo backend (Gloo's headers were found at build time).
pub fn available() -> bool {
    // SAFETY: a constant query.
    unsafe { preln_dist_available() == 1 }
}

/// Whether this build has c10d's NCCL backend (a CUDA libtorch, with the CUDA runtime's and
/// NCCL's headers, at build time).
pub fn nccl_available() -> bool {
    // SAFETY: a constant query.
    unsafe { preln_dist_nccl_available() == 1 }
}

/// Which c10d backend carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, over TCP.
    Gloo,
    /// CUDA tensors, GPU to GPU.
    Nccl,
}

/// Where and as whom a rank joins its group.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendezvous {
    /// `MASTER_ADDR`
    pub addr: String,
    /// `MASTER_PORT`
    pub port: u16,
    /// `RANK`
    pub rank: usize,
    /// `LOCAL_RANK` (the rank's index on its machine; `RANK` where unset)
    pub local_rank: usize,
    /// `WORLD_SIZE`
    pub world: usize,
    /// Whether this rank hosts the store: rank 0, unless the launcher's agent hosts it
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`, torchrun's default).
    pub server: bool,
    /// How long the rendezvous and every collective may wait for the other ranks.
    pub timeout: Duration,
    /// What this rank's Gloo device binds to: `127.0.0.1` when the group meets on this machine
    /// (`MASTER_ADDR` a loopback address), `if:NAME` for `GLOO_SOCKET_IFNAME=NAME`, else `""`:
    /// the address this machine's host name resolves to (torch.distributed's defaults).
    pub host: String,
}

impl Rendezvous {
    /// The rendezvous `torchrun` describes in the environment; `None` outside a launcher
    /// (no `WORLD_SIZE`); an error naming the variable that is missing or malformed.
    pub fn from_env(timeout: Duration) -> Result<Option<Rendezvous>, String> {
        Self::from_vars(|k| std::env::var(k).ok(), timeout)
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>, timeout: Duration) -> Result<Option<Rendezvous>, String> {
        if var("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let need = |k: &str| var(k).ok_or_else(|| format!("{k} is not set (WORLD_SIZE is)"));
        let num = |k: &str| -> Result<usize, String> {
            let v = need(k)?;
            v.trim().parse().map_err(|_| format!("{k}={v:?} is not a number"))
        };
        let (rank, world) = (num("RANK")?, num("WORLD_SIZE")?);
        let local_rank = if var("LOCAL_RANK").is_some() { num("LOCAL_RANK")? } else { rank };
        if world < 1 || rank >= world {
            return Err(format!("RANK={rank} must be below WORLD_SIZE={world}"));
        }
        let addr = need("MASTER_ADDR")?;
        let port = num("MASTER_PORT")?;
        let port = u16::try_from(port).map_err(|_| format!("MASTER_PORT={port} is not a port"))?;
        let agent = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let loopback = addr == "localhost" || addr.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
        let host = match var("GLOO_SOCKET_IFNAME").filter(|s| !s.is_empty()) {
            Some(iface) => format!("if:{}", iface.split(',').next().unwrap_or_default()),
            None if loopback => "127.0.0.1".into(),
            None => String::new(),
        };
        Ok(Some(Rendezvous { addr, port, rank, local_rank, world, server: rank == 0 && !agent, timeout, host }))
    }
}

/// A process group: collectives with every other rank (CPU tensors with Gloo, CUDA tensors
/// with NCCL).
pub struct ProcessGroup {
    handle: *mut c_void,
    rank: usize,
    world: usize,
    backend: Backend,
}

impl ProcessGroup {
    /// Joins the Gloo group (blocks until every rank has, or the timeout).
    pub fn join(r: &Rendezvous) -> Result<ProcessGroup, OpError> {
        Self::join_with(r, Backend::Gloo)
    }

    /// Joins the group of `backend` (Gloo: blocks until every rank has, or the timeout; NCCL
    /// meets at the first collective).
    pub fn join_with(r: &Rendezvous, backend: Backend) -> Result<ProcessGroup, OpError> {
        let (addr, host) = (cstring(&r.addr)?, cstring(&r.host)?);
        let mut handle = std::ptr::null_mut();
        let (port, rank, world, server) =
            (c_int::from(r.port), r.rank as c_int, r.world as c_int, c_int::from(r.server));
        let timeout = r.timeout.as_millis() as i64;
        // SAFETY: the strings outlive the call; on success the shim writes a new group pointer,
        // which this value owns and frees on drop.
        check(unsafe {
            match backend {
                Backend::Gloo => {
                    preln_dist_new(&mut handle, addr.as_ptr(), port, rank, world, server, timeout, host.as_ptr())
                }
                Backend::Nccl => preln_dist_new_nccl(&mut handle, addr.as_ptr(), port, rank, world, server, timeout),
            }
        })?;
        Ok(ProcessGroup { handle, rank: r.rank, world: r.world, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// `t` becomes the sum of `t` over all ranks (in place; a contiguous CPU tensor).
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), OpError> {
        // SAFETY: a live group and a live tensor.
        check(unsafe { preln_dist_allreduce_sum(self.handle, ptr(t)) }).map(|_| ())
    }

    /// Sets `key` in the group's store (under `preln/`): a note every rank can read.
    pub fn store_set(&self, key: &str, value: &str) -> Result<(), OpError> {
        let (key, value) = (cstring(key)?, cstring(value)?);
        // SAFETY: a live group; the strings outlive the call.
        check(unsafe { preln_dist_store_set(self.handle, key.as_ptr(), value.as_ptr()) }).map(|_| ())
    }

    /// The value of `key` in the group's store, `None` where no rank has set it (at most 255
    /// bytes; no waiting).
    pub fn store_get(&self, key: &str) -> Result<Option<String>, OpError> {
        let key = cstring(key)?;
        let mut buf = [0 as c_char; 256];
        let mut found = 0;
        // SAFETY: a live group; the shim writes at most `len` bytes, NUL-terminated.
        check(unsafe {
            preln_dist_store_get(self.handle, key.as_ptr(), buf.as_mut_ptr(), buf.len() as c_int, &mut found)
        })?;
        // SAFETY: NUL-terminated by the shim.
        Ok((found == 1).then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()))
    }

    /// `t` becomes rank `root`'s `t` (in place).
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), OpError> {
        // SAFETY: a live group and a live tensor.
        check(unsafe { preln_dist_broadcast(self.handle, ptr(t), root as c_int) }).map(|_| ())
    }
}

fn cstring(s: &str) -> Result<CString, OpError> {
    CString::new(s).map_err(|_| OpError(format!("{s:?} holds a NUL byte")))
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the pointer came from preln_dist_new and is freed once.
        unsafe { preln_dist_free(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn torchrun_variables_make_a_rendezvous() {
        let t = Duration::from_secs(5);
        assert_eq!(Rendezvous::from_vars(vars(&[]), t), Ok(None));
        let env = [("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
        let r = Rendezvous::from_vars(vars(&env), t).unwrap().unwrap();
        assert!(r.server && r.world == 2 && r.port == 29500 && r.host == "127.0.0.1");
        let mut remote = env.to_vec();
        remote[2] = ("MASTER_ADDR", "node0.cluster");
        assert_eq!(Rendezvous::from_vars(vars(&remote), t).unwrap().unwrap().host, "");
        remote.push(("GLOO_SOCKET_IFNAME", "eth1,eth2"));
        assert_eq!(Rendezvous::from_vars(vars(&remote), t).unwrap().unwrap().host, "if:eth1");
        let mut agent = env.to_vec();
        agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert!(!Rendezvous::from_vars(vars(&agent), t).unwrap().unwrap().server);
        let err = Rendezvous::from_vars(vars(&env[..2]), t).unwrap_err();
        assert!(err.contains("MASTER_ADDR"), "{err}");
        let bad = [("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        assert!(Rendezvous::from_vars(vars(&bad), t).unwrap_err().contains("below WORLD_SIZE"));
    }
}
